//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The capture comparison's link: a veth pair whose near end, vethNear, is
// in the bench's namespace, where the captures listen, and whose far end,
// vethFar, is in a namespace of its own (created by the orchestrator, a
// child of the bench's), where the sender's socket lives. Traffic between
// two namespaces crosses the pair as it would between two hosts, where
// two addresses in one namespace would go through loopback.
const (
	vethNear    = "bcap0"
	vethFar     = "bcap1"
	vethNearMAC = "02:00:00:bc:00:01"
	vethFarMAC  = "02:00:00:bc:00:02"
)

// Addresses of the two ends, private ranges that exist only in the
// bench's namespaces.
var (
	vethNear4 = netip.MustParseAddr("10.201.0.1")
	vethFar4  = netip.MustParseAddr("10.201.0.2")
	vethNear6 = netip.MustParseAddr("fd00:201::1")
	vethFar6  = netip.MustParseAddr("fd00:201::2")
)

// vethLink is the pair, and the far namespace it reaches.
type vethLink struct {
	far *os.File // the far namespace; open, it keeps the namespace alive
}

// setupVeth creates the far namespace and the pair, both ends up with
// their addresses, and a permanent neighbour entry for the other end on
// each, so that no datagram of a burst waits for ARP or neighbour
// discovery.
func setupVeth() (_ *vethLink, err error) {
	far, err := newNetns()
	if err != nil {
		return nil, err
	}
	v := &vethLink{far: far}
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	// ip opens the namespace by its path; /proc/PID/fd/N is this
	// process's descriptor of it.
	farPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), far.Fd())
	if err := ip("link", "add", vethNear, "address", vethNearMAC, "type", "veth",
		"peer", "name", vethFar, "address", vethFarMAC, "netns", farPath); err != nil {
		return nil, err
	}
	end := func(dev, mac string, me4, peer4, me6, peer6 netip.Addr) error {
		for _, args := range [][]string{
			{"addr", "add", me4.String() + "/24", "dev", dev},
			// nodad: usable at once, not after duplicate detection.
			{"addr", "add", me6.String() + "/64", "dev", dev, "nodad"},
			{"neigh", "replace", peer4.String(), "lladdr", mac, "dev", dev, "nud", "permanent"},
			{"neigh", "replace", peer6.String(), "lladdr", mac, "dev", dev, "nud", "permanent"},
			{"link", "set", dev, "up"},
		} {
			if err := ip(args...); err != nil {
				return err
			}
		}
		return nil
	}
	if err := end(vethNear, vethFarMAC, vethNear4, vethFar4, vethNear6, vethFar6); err != nil {
		return nil, err
	}
	if err := v.inFar(func() error { return end(vethFar, vethNearMAC, vethFar4, vethNear4, vethFar6, vethNear6) }); err != nil {
		return nil, err
	}
	// The near end runs (has a carrier) once both ends are up.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ifi, err := net.InterfaceByName(vethNear)
		if err == nil && ifi.Flags&net.FlagRunning != 0 {
			return v, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s is not running 5s after it was brought up", vethNear)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// close removes the pair (deleting one end deletes both) and lets the far
// namespace go.
func (v *vethLink) close() {
	_ = ip("link", "del", vethNear)
	v.far.Close()
}

// inFar runs f on an OS thread that has entered the far namespace:
// sockets f opens and processes it starts belong to it.
func (v *vethLink) inFar(f func() error) error {
	return onThreadIn(v.far, f)
}

// addrs returns the near and far addresses of family.
func (v *vethLink) addrs(family int) (near, far netip.Addr) {
	if family == 6 {
		return vethNear6, vethFar6
	}
	return vethNear4, vethFar4
}

// ip runs iproute2's ip.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetns returns a new network namespace, which the calling process
// does not enter.
func newNetns() (*os.File, error) {
	var ns *os.File
	err := onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return os.NewSyscallError("unshare CLONE_NEWNET", err)
		}
		var err error
		ns, err = os.Open("/proc/thread-self/ns/net")
		return err
	})
	return ns, err
}

// onThreadIn runs f on an OS thread that has entered the network
// namespace ns, and returns the thread to its own namespace after.
func onThreadIn(ns *os.File, f func() error) error {
	return onThread(func() error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return os.NewSyscallError("setns", err)
		}
		return f()
	})
}

// onThread runs f locked to an OS thread of its own, which may change its
// network namespace; the thread returns to the process's namespace after,
// or, if it cannot, ends with the goroutine instead of running other Go
// code in the wrong namespace.
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		ferr := f()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, os.NewSyscallError("setns back", err))
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
