//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
)

// envRole names the part of the bench a re-executed process plays. The
// command as started has none: it creates the namespace and runs the
// orchestrator in it.
const envRole = "UDPSTREAM_BENCH_ROLE"

// The roles of re-executed processes.
const (
	roleOrchestrator = "orchestrator" // in the namespace: runs everything
	roleReceiver     = "receiver"     // one receiver for one measurement
	roleFlood        = "flood"        // the flood traffic
	roleEcho         = "echo"         // a ping-pong server
)

// Exit codes besides 0 and 1.
const (
	exitUsage       = 2
	exitNoNamespace = 3 // the namespace could not be created
	exitNoCapture   = 4 // -capture cannot run here: not root, or no tcpdump
)

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

// dispatch runs the part of the bench this process was started for and
// returns the exit code.
func dispatch(args []string, stdout, stderr io.Writer) int {
	switch role := os.Getenv(envRole); role {
	case "":
		return enterNamespace(args, stdout, stderr)
	case roleOrchestrator:
		return orchestrate(args, stdout, stderr)
	case roleReceiver:
		return receiverMain(args, stdout, stderr)
	case roleFlood:
		return floodMain(args, stdout, stderr)
	case roleEcho:
		return echoMain(args, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "bench: unknown role %q in %s\n", role, envRole)
		return exitUsage
	}
}
