package fastpath

// The BPF object and its Go bindings (fastpath_bpfel.go, fastpath_bpfel.o)
// are generated and committed, so that a build needs no clang; regenerate
// after changing bpf/fastpath.c (needs clang and libbpf-dev):
//
//	go generate ./fastpath/

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel -type flow_key -type flow_val -type flow_state fastpath bpf/fastpath.c -- -O2 -g -Wall -I/usr/include/x86_64-linux-gnu
