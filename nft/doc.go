// Package nft programs a compiled nftdns ruleset into the kernel over netlink.
package nft
