package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpstream/udpstream/internal/ipheader"
	"github.com/udpstream/udpstream/internal/netnstest"
)

// Tests that send traffic do it in a network namespace of their own,
// never in the host's: the test binary runs itself again, for one test, in
// a new user and network namespace, where it has CAP_NET_RAW without being
// root and where loopback is its own. The parent passes or fails with that
// child. Where namespaces cannot be made the test is skipped with the
// reason; with CI set, that skip is a failure.

const (
	// envTool passes the path of the built tool to namespaced children.
	envTool = "UDPSTREAM_CMD_TOOL"
)

// waitTime bounds every wait for the tool, generously for the race
// detector on a loaded machine.
const waitTime = 10 * time.Second

// buildDir holds the tool built for this test binary, removed by TestMain.
var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tool returns the path of the udpstream binary built from this package,
// building it once per test binary. Namespaced children use the parent's.
func tool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envTool); p != "" {
		return p
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "udpstream-cmd-test-")
		if buildErr != nil {
			return
		}
		// Others, such as a child of the unprivileged demo test, must be
		// able to run it.
		if buildErr = os.Chmod(buildDir, 0o755); buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "udpstream")
		out, err := exec.Command("go", "build", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// inNetns reports whether the caller is the namespaced child and should run
// the test body, with loopback up. In the parent it runs the child, passing
// it the tool's path if it was built, and returns false.
func inNetns(t *testing.T) bool {
	t.Helper()
	if buildPath != "" {
		return netnstest.InNetns(t, envTool+"="+buildPath)
	}
	return netnstest.InNetns(t)
}

// setLoopbackMTU sets the MTU of loopback in the test's namespace.
func setLoopbackMTU(t *testing.T, mtu int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
		t.Fatalf("ioctl SIOCSIFMTU: %v", err)
	}
}

// sendOpts are the IP header fields a test sender sets.
type sendOpts struct {
	ttl, tos  int
	df        int    // 0: kernel default; 1: always DF; -1: never DF (IPv4)
	ipOptions []byte // IPv4 options
	dstOpts   bool   // add an IPv6 Destination Options header
}

// sender is an ordinary UDP socket on the loopback address of network
// whose datagrams carry the given header fields.
func sender(t *testing.T, network string, o sendOpts) *net.UDPConn {
	t.Helper()
	addr := netip.MustParseAddr("127.0.0.1")
	if network == "udp6" {
		addr = netip.IPv6Loopback()
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := ipheader.Set(c, network, o.ttl, o.tos); err != nil {
		t.Fatalf("sender TTL/TOS: %v", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	set := func(fd uintptr, level, opt, v int) {
		if serr == nil && v != 0 {
			serr = unix.SetsockoptInt(int(fd), level, opt, v)
		}
	}
	err = rc.Control(func(fd uintptr) {
		if network == "udp6" {
			if o.dstOpts && serr == nil {
				// Next Header and length 0 (8 bytes), then a PadN option
				// filling the remaining 6 bytes.
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, "\x00\x00\x01\x04\x00\x00\x00\x00")
			}
			return
		}
		switch o.df {
		case 1:
			set(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		case -1:
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		}
		if o.ipOptions != nil && serr == nil {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, string(o.ipOptions))
		}
	})
	if err != nil || serr != nil {
		t.Fatalf("sender options: %v %v", err, serr)
	}
	return c
}

// localAddr is c's address and port, IPv4 unmapped, as the tool prints it.
func localAddr(c *net.UDPConn) netip.AddrPort {
	a := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// send sends payload from c to dst.
func send(t *testing.T, c *net.UDPConn, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(payload, dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
}

// loopback returns the loopback address of network with port.
func loopback(network string, port uint16) netip.AddrPort {
	if network == "udp6" {
		return netip.AddrPortFrom(netip.IPv6Loopback(), port)
	}
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
}

// proc is a running tool, in-process or a built binary: its output line
// by line, and its exit status once it has exited.
type proc struct {
	stdout, stderr <-chan string
	done           chan struct{} // closed on exit, once code is set
	code           int
	cancel         func() // in-process: cancel the context; binary: nil
	cmd            *exec.Cmd
	mode           string // the mode the second stderr line named, once port has read it

	restOut, restErr []string // what wait collected
}

// lines sends r's lines on the returned channel and closes it at EOF.
func lines(r io.Reader, wg *sync.WaitGroup) <-chan string {
	ch := make(chan string, 4096)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

// startRun runs the tool in-process, as main would, with ctx cancelled by
// proc.cancel in place of a signal.
func startRun(t *testing.T, args ...string) *proc {
	t.Helper()
	g0 := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	or, ow := io.Pipe()
	er, ew := io.Pipe()
	var wg sync.WaitGroup
	p := &proc{stdout: lines(or, &wg), stderr: lines(er, &wg), cancel: cancel, done: make(chan struct{})}
	go func() {
		p.code = run(ctx, args, ow, ew)
		ow.Close()
		ew.Close()
		wg.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(waitTime):
			t.Errorf("run %q did not return", args)
			return
		}
		// Nothing of the run may outlive it.
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > g0 {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines %d -> %d after run returned:\n%s", g0, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return p
}

// startTool runs the built tool with args.
func startTool(t *testing.T, bin string, attr *syscall.SysProcAttr, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = attr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		if attr != nil && attr.Cloneflags&syscall.CLONE_NEWUSER != 0 {
			netnstest.SkipOrFail(t, fmt.Sprintf("cannot start %s in a new user namespace: %v", bin, err))
		}
		t.Fatalf("starting %s: %v", bin, err)
	}
	var wg sync.WaitGroup
	p := &proc{stdout: lines(stdout, &wg), stderr: lines(stderr, &wg), cmd: cmd, done: make(chan struct{})}
	go func() {
		wg.Wait() // Wait closes the pipes: read them to the end first
		p.code = -2
		if err := cmd.Wait(); err == nil || cmd.ProcessState != nil {
			p.code = cmd.ProcessState.ExitCode()
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// next returns the next line of ch, failing the test if none comes.
func next(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case l, ok := <-ch:
		if !ok {
			t.Fatalf("%s: output ended", what)
		}
		return l
	case <-time.After(waitTime):
		t.Fatalf("%s: no line within %v", what, waitTime)
	}
	return ""
}

var (
	listeningRE = regexp.MustCompile(`^udpstream: listening on port ([0-9]+)$`)
	modeRE      = regexp.MustCompile(`^udpstream: mode (ring|kernel|socket)$`)
)

// port reads the first stderr line, which must say the port, and the
// second, which must say the mode (kept in p.mode).
func (p *proc) port(t *testing.T) uint16 {
	t.Helper()
	l := next(t, p.stderr, "stderr")
	m := listeningRE.FindStringSubmatch(l)
	if m == nil {
		t.Fatalf("first stderr line %q, want %q", l, "udpstream: listening on port N")
	}
	n, err := strconv.ParseUint(m[1], 10, 16)
	if err != nil || n == 0 {
		t.Fatalf("port in %q: %v", l, err)
	}
	l = next(t, p.stderr, "stderr")
	mm := modeRE.FindStringSubmatch(l)
	if mm == nil {
		t.Fatalf("second stderr line %q, want %q", l, "udpstream: mode M")
	}
	p.mode = mm[1]
	return uint16(n)
}

// wait waits for the exit and returns the status with the rest of the
// output. Called again, it returns the same.
func (p *proc) wait(t *testing.T) (code int, stdout, stderr []string) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTime):
		t.Fatalf("no exit within %v", waitTime)
	}
	for l := range p.stdout {
		p.restOut = append(p.restOut, l)
	}
	for l := range p.stderr {
		p.restErr = append(p.restErr, l)
	}
	return p.code, p.restOut, p.restErr
}

// hasCapNetRaw reports whether this process has CAP_NET_RAW in effect.
func hasCapNetRaw(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<unix.CAP_NET_RAW) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}
