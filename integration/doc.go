// Package integration holds end-to-end tests that run the nftdns binary
// against real packets in throwaway network namespaces; they need root.
package integration
