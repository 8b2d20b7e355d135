package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTopTmux runs -top in an 80×24 tmux pane, as over ssh: the screen
// shows each source, the one whose TTL varies marked; Ctrl-C ends it and
// leaves the pane as it was, main screen and cursor back, with the
// summary. Run again, it is given two Ctrl-C in quick succession, the
// second while the first's clean end is under way: the pane is as clean.
func TestTopTmux(t *testing.T) {
	needProgram(t, "tmux", "tmux")
	bin := tool(t)
	if !inNetns(t) {
		return
	}
	sock := filepath.Join(t.TempDir(), "tmux")
	tmux := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %q: %v: %s", args, err, out)
		}
		return string(out)
	}
	const port = 5555 // the namespace is the test's own: any port is free
	start := func(session string) {
		t.Helper()
		// The shell traps SIGINT (a handler, which the tool does not
		// inherit), so that it outlives a tool the signal ends and the
		// pane stays as the tool left it. Once the tool is gone it
		// ignores the signal, which its sleep then inherits: a Ctrl-C
		// that comes after the tool has ended (the second of two, when
		// the first ended it quickly) would otherwise end the sleep, the
		// shell and the pane with it.
		//
		// The terminal keeps its output on Ctrl-C (noflsh): by default
		// the kernel discards what was written to the pane's terminal
		// and tmux has not read yet, and a second Ctrl-C that comes just
		// after the tool left the screen, or after the shell's EXITED
		// line, takes that output with it. What the tool writes is what
		// is tested here, not how fast tmux reads it.
		tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", session,
			"stty noflsh; trap : INT; env TERM=xterm-256color "+bin+" -top -port 5555; echo EXITED $?; trap '' INT; sleep 60")
	}
	start("top")
	t.Cleanup(func() { exec.Command("tmux", "-S", sock, "kill-server").Run() })
	session := "top"
	pane := func() string { return tmux("capture-pane", "-p", "-t", session) }
	waitFor := func(what string, ok func(string) bool) string {
		t.Helper()
		deadline := time.Now().Add(waitTime)
		for {
			s := pane()
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within %v; the pane:\n%s", what, waitTime, s)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("view", func(s string) bool { return strings.Contains(s, "udpstream -top  port 5555") })

	// One source address with two TTLs, the classic sign of spoofing; one
	// with a single hop limit and ECT(0).
	for _, s := range []struct {
		network string
		o       sendOpts
		n       int
	}{
		{"udp4", sendOpts{ttl: 64}, 3},
		{"udp4", sendOpts{ttl: 50}, 2},
		{"udp6", sendOpts{ttl: 9, tos: 0x02}, 4},
	} {
		c := sender(t, s.network, s.o)
		for range s.n {
			send(t, c, loopback(s.network, port), []byte("top"))
		}
	}
	// All nine: a refresh may fall between two of them, and draw a
	// screen with both sources on it but not every datagram counted.
	screen := waitFor("all datagrams", func(s string) bool {
		return strings.Contains(s, "9 datagrams from 2 sources")
	})
	var row4, row6 string
	for _, l := range strings.Split(screen, "\n") {
		switch {
		case strings.HasPrefix(l, "127.0.0.1 "):
			row4 = l
		case strings.HasPrefix(l, "::1 "):
			row6 = l
		}
	}
	if f := strings.Fields(row4); len(f) != 7 || f[1] != "5" || f[3] != "50-64" || f[4] != "64" || f[6] != "!" {
		t.Errorf("IPv4 row %q, want 5 datagrams, TTL 50-64, mostly 64, marked !", row4)
	}
	if f := strings.Fields(row6); len(f) != 6 || f[1] != "4" || f[3] != "9" || f[5] != "..0." {
		t.Errorf("IPv6 row %q, want 4 datagrams, hop limit 9, ECT(0), unmarked", row6)
	}
	if !strings.Contains(screen, "TTL varies for 1 source") {
		t.Errorf("no count of marked sources:\n%s", screen)
	}
	if got := strings.TrimSpace(tmux("display", "-p", "-t", "top", "#{alternate_on}")); got != "1" {
		t.Errorf("alternate screen %q while the view runs, want 1", got)
	}

	tmux("send-keys", "-t", "top", "C-c")
	after := waitFor("exit", func(s string) bool { return strings.Contains(s, "EXITED") })
	for _, want := range []string{"udpstream: listening on port 5555", "udpstream: 9 datagrams delivered", "EXITED"} {
		if !strings.Contains(after, want) {
			t.Errorf("after exit the pane lacks %q:\n%s", want, after)
		}
	}
	checkClean := func(after string) {
		t.Helper()
		for _, gone := range []string{"udpstream -top", "SOURCE", "127.0.0.1", "TTL varies"} {
			if strings.Contains(after, gone) {
				t.Errorf("after exit the pane still shows %q:\n%s", gone, after)
			}
		}
		got := strings.TrimSpace(tmux("display", "-p", "-t", session, "#{alternate_on} #{cursor_flag}"))
		if got != "0 1" {
			t.Errorf("after exit: alternate screen and cursor flags %q, want main screen and the cursor shown (0 1)", got)
		}
	}
	checkClean(after)

	// Two Ctrl-C: the second lands while the stream is closing.
	session = "top2"
	start(session)
	waitFor("view", func(s string) bool { return strings.Contains(s, "udpstream -top  port 5555") })
	send(t, sender(t, "udp4", sendOpts{}), loopback("udp4", port), []byte("top"))
	waitFor("the source", func(s string) bool { return strings.Contains(s, "127.0.0.1 ") })
	tmux("send-keys", "-t", session, "C-c")
	time.Sleep(5 * time.Millisecond)
	tmux("send-keys", "-t", session, "C-c")
	after = waitFor("exit", func(s string) bool { return strings.Contains(s, "EXITED") })
	checkClean(after)
	// Ended by the second signal (130), or cleanly (0) if the first had
	// done its work before the second came.
	if !strings.Contains(after, "EXITED 130") && !strings.Contains(after, "EXITED 0") {
		t.Errorf("after two Ctrl-C, want exit status 130 or 0:\n%s", after)
	}
}
