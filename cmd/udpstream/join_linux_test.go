package main

import (
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRunJoin runs the tool with -join and sends it a datagram to the
// group from another host's address, over a veth link: the line shows the
// group as dst, and the membership lasts as long as the tool runs.
func TestRunJoin(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, args := range [][]string{
		{"link", "add", "m0", "type", "veth", "peer", "name", "m1"},
		{"link", "set", "m0", "up"},
		{"link", "set", "m1", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "m0"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	p := startRun(t, "-port", "0", "-json", "-count", "1", "-i", "m0", "-join", "239.1.2.3", "-join", "ff05::db8:1")
	port := p.port(t)
	if !joined(t) || !strings.Contains(readProc(t, "/proc/net/igmp6"), "ff05000000000000000000000db80001") {
		t.Fatalf("no membership while the tool runs:\n%s%s", readProc(t, "/proc/net/igmp"), readProc(t, "/proc/net/igmp6"))
	}

	// A raw socket sends as a peer on the link would: from an address
	// that is not this host's, which the kernel takes only from the wire.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.BindToDevice(fd, "m1"); err != nil {
		t.Fatal(err)
	}
	payload := []byte("to the group")
	pkt := make([]byte, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 1, unix.IPPROTO_UDP // the kernel fills in the checksum and ID
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	copy(pkt[12:16], []byte{192, 0, 2, 99})
	copy(pkt[16:20], []byte{239, 1, 2, 3})
	binary.BigEndian.PutUint16(pkt[20:], 4000)
	binary.BigEndian.PutUint16(pkt[22:], port)
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // checksum 0: none, over IPv4
	copy(pkt[28:], payload)
	if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: [4]byte{239, 1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	m := checkSchema(t, next(t, p.stdout, "stdout"), false)
	if m["dst"] != "239.1.2.3" || m["src"] != "192.0.2.99" || m["payload"] != hex.EncodeToString(payload) {
		t.Errorf("line %v, want the datagram from 192.0.2.99 to 239.1.2.3", m)
	}
	code, _, _ := p.wait(t)
	if code != exitOK {
		t.Errorf("exit %d", code)
	}
	if joined(t) {
		t.Errorf("the membership outlived the tool:\n%s", readProc(t, "/proc/net/igmp"))
	}
}

// joined reports whether /proc/net/igmp lists 239.1.2.3 on m0, waiting a
// moment for it to change; its groups are the hexadecimal of a native-endian
// word, and this test runs where words are little-endian.
func joined(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		in := false
		dev := ""
		for _, line := range strings.Split(readProc(t, "/proc/net/igmp"), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
				dev = f[1]
			}
			if len(f) > 0 && dev == "m0" && f[0] == "030201EF" {
				in = true
			}
		}
		if in || time.Now().After(deadline) {
			return in
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readProc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
