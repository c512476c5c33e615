// Package harness builds throwaway network-namespace topologies with real DNS
// servers and clients, so nftdns can be exercised end to end by the
// integration tests and the demo; it needs root and touches nothing in the
// root namespace.
package harness
