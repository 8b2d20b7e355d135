// Package netnstest runs tests that need the kernel's network in a network
// namespace of their own, never in the host's: the test binary runs itself
// again, for one test, in a new user and network namespace, where it has
// CAP_NET_RAW and CAP_NET_ADMIN without being root. The parent test passes
// or fails with that child. Where namespaces cannot be made the test is
// skipped with the reason, except under CI, where that is a failure.
package netnstest

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/udpstream/udpstream/internal/netns"
)

// envChild names the test a re-executed test binary is to run as the
// namespaced child.
const envChild = "UDPSTREAM_NETNS_TEST"

// InNetns reports whether the caller is the namespaced child of test t and
// should run the test body; loopback is up there. In the parent it runs
// the child, with env added to its environment, and returns false.
func InNetns(t *testing.T, env ...string) bool {
	t.Helper()
	if os.Getenv(envChild) == t.Name() {
		if err := netns.LoopbackUp(); err != nil {
			t.Fatalf("bringing loopback up: %v", err)
		}
		return true
	}
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("InNetns runs top-level tests only")
	}
	RunChild(t, syscall.CLONE_NEWNET, append(env, envChild+"="+t.Name())...)
	return false
}

// RunChild runs test t again in a child of this test binary, in a new user
// namespace plus the namespaces in extra, with env added to its
// environment. It fails t if the child fails or does not report a pass.
func RunChild(t *testing.T, extra uintptr, env ...string) {
	t.Helper()
	args := []string{"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	// The child's own default timeout would cut short a test given more
	// time (a long soak) on the parent's command line.
	if f := flag.Lookup("test.timeout"); f != nil {
		args = append(args, "-test.timeout="+f.Value.String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), RaceEnv())
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = netns.UserNS(extra)
	out, err := cmd.CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("=== RUN")) {
		// The child never started: namespaces are not available here.
		SkipOrFail(t, fmt.Sprintf("cannot run in a new user namespace: %v: %s", err, out))
	}
	t.Logf("namespaced child:\n%s", out)
	if err != nil {
		t.Fatalf("namespaced child failed: %v", err)
	}
	if bytes.Contains(out, []byte("--- SKIP: "+t.Name())) {
		SkipOrFail(t, "namespaced child skipped")
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("namespaced child did not report a pass")
	}
}

// RaceEnv is the GORACE setting for child test processes: the race runtime
// sleeps a second at exit unless told not to.
func RaceEnv() string {
	return "GORACE=atexit_sleep_ms=0 " + os.Getenv("GORACE")
}

// SkipOrFail skips a privileged test, unless running in CI, where a
// skipped privileged test would hide a broken environment.
func SkipOrFail(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("privileged test cannot run in CI: %s", why)
	}
	t.Skip(why)
}
