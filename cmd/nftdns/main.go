// Command nftdns filters DNS queries in the kernel with nftables; see
// package nftdns/cmd/nftdns/cli.
package main

import (
	"os"

	"nftdns/cmd/nftdns/cli"
)

func main() { os.Exit(cli.Main(os.Args, os.Stdout, os.Stderr)) }
