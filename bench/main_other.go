//go:build !linux

package main

import (
	"fmt"
	"os"
	"runtime"
)

// The bench measures Linux receive paths (packet sockets, network
// namespaces); elsewhere it only says so.
func main() {
	fmt.Fprintf(os.Stderr, "bench: runs on Linux only, not on %s\n", runtime.GOOS)
	os.Exit(2)
}
