package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"

	"github.com/udpstream/udpstream/internal/ipheader"
	"github.com/udpstream/udpstream/internal/netns"
)

// setHeaderFields sets the TTL / hop limit and TOS / traffic class of the
// datagrams c sends.
func setHeaderFields(c *net.UDPConn, network string, ttl, tos int) error {
	return ipheader.Set(c, network, ttl, tos)
}

// setMulticast makes the multicast datagrams c sends leave by the
// interface of the IPv4 address from, with the given TTL.
func setMulticast(c *net.UDPConn, from netip.Addr, ttl int) error {
	return ipheader.SetMulticast(c, from, ttl)
}

// loopbackUp brings the loopback interface of a new namespace up.
func loopbackUp() error { return netns.LoopbackUp() }

// demoInNamespace runs this program again with the same arguments, in a
// new user and network namespace: there it is root, with CAP_NET_RAW over
// a network of its own, whatever it is outside. It returns the exit status
// of that run.
func demoInNamespace(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		return fail(stderr, fmt.Errorf("demo: no CAP_NET_RAW, and cannot find this program to run it in a namespace of its own: %w", err))
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), envDemoNetns+"=1")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = netns.UserNS(syscall.CLONE_NEWNET)
	// Its own process group, so that a Ctrl-C reaches it only as the
	// signal forwarded below, never twice.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	if err := cmd.Start(); err != nil {
		return fail(stderr, fmt.Errorf("demo: no CAP_NET_RAW, and no user namespace to get it in (%w): "+
			"run it as root, or allow unprivileged user namespaces "+
			"(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)", err))
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(syscall.SIGTERM) })
	defer stop()
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	case exit != nil && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGPIPE:
		// Its output was closed, as by "| head": nowhere to say more.
		return exitRuntime
	}
	return fail(stderr, fmt.Errorf("demo in its own namespace: %w", err))
}
