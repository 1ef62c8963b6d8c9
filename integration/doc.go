// Package integration holds holdfast's end-to-end tests: the holdfast binary
// as a director between real Linux TCP/UDP peers, in network namespaces built
// by package holdfast/lab (DESIGN.md section 5). The tests need root and skip
// without it, except those that only run the binary with bad arguments.
package integration
