//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/udpstream/udpstream/internal/netns"
	"golang.org/x/sys/unix"
)

// envHostNetns carries the inode of the starting process's network
// namespace, so that the orchestrator can check it is not running there.
const envHostNetns = "UDPSTREAM_BENCH_HOST_NETNS"

// enterNamespace checks the flags, then runs the orchestrator as a child
// in a new network namespace: with CLONE_NEWNET alone when root, with
// CLONE_NEWUSER|CLONE_NEWNET and identity uid/gid maps otherwise. It
// returns the child's exit code, or exitNoNamespace when the namespace
// cannot be made.
func enterNamespace(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		if errors.Is(err, errHelp) {
			return 0
		}
		return exitUsage
	}
	var extraEnv []string
	if cfg.capture {
		if os.Getuid() != 0 {
			// tcpdump gives up root for its own user, which a user
			// namespace of one mapped uid does not have.
			fmt.Fprintf(stderr, "bench: -capture runs tcpdump, which needs the bench to run as root\n")
			return exitNoCapture
		}
		if _, err := exec.LookPath("tcpdump"); err != nil {
			fmt.Fprintf(stderr, "bench: -capture needs tcpdump (Debian: apt-get install tcpdump): %v\n", err)
			return exitNoCapture
		}
		// Built here, outside the namespace, where the go command has the
		// network should it need it.
		dir, err := os.MkdirTemp("", "udpstream-bench-cmd-")
		if err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin, err := buildCommand(dir)
		if err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		extraEnv = append(extraEnv, envCommand+"="+bin)
	}
	hostNetns, err := netnsInode()
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	mode := "network namespace"
	if os.Getuid() != 0 {
		attr = netns.UserNS(syscall.CLONE_NEWNET)
		mode = "user and network namespace"
	}
	attr.Pdeathsig = syscall.SIGKILL
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = roleEnv(roleOrchestrator, append(extraEnv, envHostNetns+"="+strconv.FormatUint(hostNetns, 10), "UDPSTREAM_BENCH_NAMESPACE="+mode)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, stdout, stderr
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "bench: cannot create a new %s: %v\n"+
			"bench: run as root, or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces)\n", mode, err)
		return exitNoNamespace
	}
	if err := cmd.Wait(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		fmt.Fprintf(stderr, "bench: orchestrator: %v\n", err)
		return 1
	}
	return 0
}

// roleEnv returns this process's environment for a child playing role,
// with extra variables, replacing any role or extra set before.
func roleEnv(role string, extra ...string) []string {
	set := append([]string{envRole + "=" + role}, extra...)
	env := make([]string, 0, len(os.Environ())+len(set))
	for _, kv := range os.Environ() {
		replaced := false
		for _, s := range set {
			if k, _, _ := strings.Cut(s, "="); strings.HasPrefix(kv, k+"=") {
				replaced = true
				break
			}
		}
		if !replaced {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// netnsInode returns the inode number of this process's network namespace.
func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("reading the network namespace: %w", os.NewSyscallError("stat", err))
	}
	return st.Ino, nil
}

// prepareNamespace checks that this process runs in a network namespace
// other than the one the bench was started in, and brings loopback up
// there, with 127.0.0.1 and ::1.
func prepareNamespace() error {
	host, err := strconv.ParseUint(os.Getenv(envHostNetns), 10, 64)
	if err != nil {
		return fmt.Errorf("started without %s: run the bench command itself, not a role", envHostNetns)
	}
	here, err := netnsInode()
	if err != nil {
		return err
	}
	if here == host {
		return errors.New("refusing to run in the network namespace the bench was started in")
	}
	if err := netns.LoopbackUp(); err != nil {
		return err
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("loopback in the namespace: %w", err)
		}
		c.Close()
	}
	return nil
}
