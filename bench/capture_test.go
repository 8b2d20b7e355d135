//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestCaptureQuick runs the capture comparison with the quick smoke's
// small burst, end to end, and checks its JSON: every capture measured,
// every datagram it kept one of the burst, and a verdict per output kind
// of the command. Under CI it must run: tcpdump missing fails it.
func TestCaptureQuick(t *testing.T) {
	rep, _ := benchReport(t, "the capture comparison", []int{exitNoNamespace, exitNoCapture}, "-capture", "-quick")
	cr := rep.Capture
	if cr == nil || cr.Error != "" || len(rep.Runs) != 0 {
		t.Fatalf("capture report %+v, %d receiver runs; want a capture report alone", cr, len(rep.Runs))
	}
	if len(cr.Runs) != 1 || cr.Runs[0].Size != 64 || cr.Runs[0].Family != 4 {
		t.Fatalf("capture runs %+v, want one of 64 B over IPv4", cr.Runs)
	}
	r := cr.Runs[0]
	for _, name := range captureNames {
		var s *captureSummary
		for i := range r.Summary {
			if r.Summary[i].Receiver == name {
				s = &r.Summary[i]
			}
		}
		if s == nil || len(s.Errors) > 0 || len(s.Kept) != 1 || s.Kept[0] == 0 || !s.Median.ok() {
			t.Errorf("%s: summary %+v", name, s)
		}
	}
	for _, m := range r.Measurements {
		if m.Sent != quickCount || m.Other != 0 || m.Malformed != 0 || len(m.Said) == 0 {
			t.Errorf("%s: sent %d, other %d, malformed %d, said %q", m.Receiver, m.Sent, m.Other, m.Malformed, m.Said)
		}
	}
	var kinds []string
	for _, v := range cr.Verdicts {
		kinds = append(kinds, v.Receiver)
		if v.Rounds != 1 || !v.Worst.ok() {
			t.Errorf("verdict %+v", v)
		}
	}
	if !slices.Equal(kinds, []string{capCmdJSON, capCmdPcapng}) {
		t.Errorf("verdicts for %v, want one for each of the command's outputs", kinds)
	}
}

// udp4 returns an IPv4 UDP datagram from 10.0.0.2:5000 to 10.0.0.1:port
// with a payload of n bytes.
func udp4(port uint16, n int) []byte {
	b := make([]byte, 28+n)
	b[0], b[8], b[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	copy(b[12:], []byte{10, 0, 0, 2, 10, 0, 0, 1})
	binary.BigEndian.PutUint16(b[20:], 5000)
	binary.BigEndian.PutUint16(b[22:], port)
	binary.BigEndian.PutUint16(b[24:], uint16(8+n))
	return b
}

// ether wraps an IP packet in an Ethernet header.
func ether(ip []byte) []byte {
	return append(append(make([]byte, 12), 0x08, 0x00), ip...)
}

// TestCountCaptureFile reads hand-laid pcap files, in both byte orders,
// and pcapng files with enhanced and simple packet blocks, and refuses one
// cut inside a record.
func TestCountCaptureFile(t *testing.T) {
	const port = 40000
	frames := [][]byte{ether(udp4(port, 4)), ether(udp4(port+1, 4)), ether(udp4(port, 0))}

	pcap := func(bo binary.AppendByteOrder) []byte {
		b := bo.AppendUint32(nil, 0xa1b2c3d4)
		b = bo.AppendUint16(b, 2)
		b = bo.AppendUint16(b, 4)
		b = append(b, make([]byte, 8)...)
		b = bo.AppendUint32(b, 65535)
		b = bo.AppendUint32(b, linkEthernet)
		for _, f := range frames {
			b = append(b, make([]byte, 8)...)
			b = bo.AppendUint32(b, uint32(len(f)))
			b = bo.AppendUint32(b, uint32(len(f)))
			b = append(b, f...)
		}
		return b
	}
	block := func(bo binary.AppendByteOrder, typ uint32, body []byte) []byte {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		n := uint32(12 + len(body))
		b := bo.AppendUint32(nil, typ)
		b = bo.AppendUint32(b, n)
		b = append(b, body...)
		return bo.AppendUint32(b, n)
	}
	pcapng := func(bo binary.AppendByteOrder) []byte {
		shb := bo.AppendUint32(nil, pcapngByteOrderMagic)
		shb = bo.AppendUint16(shb, 1)
		shb = bo.AppendUint16(shb, 0)
		shb = append(shb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
		b := block(bo, pcapngSectionHeader, shb)
		idb := bo.AppendUint16(nil, linkRaw)
		idb = bo.AppendUint16(idb, 0)
		idb = bo.AppendUint32(idb, 0)
		b = append(b, block(bo, pcapngInterface, idb)...)
		for i, f := range frames {
			ip := f[14:]
			if i == 1 {
				b = append(b, block(bo, pcapngSimplePacket, append(bo.AppendUint32(nil, uint32(len(ip))), ip...))...)
				continue
			}
			epb := bo.AppendUint32(nil, 0)
			epb = append(epb, make([]byte, 8)...)
			epb = bo.AppendUint32(epb, uint32(len(ip)))
			epb = bo.AppendUint32(epb, uint32(len(ip)))
			b = append(b, block(bo, pcapngEnhancedPacket, append(epb, ip...))...)
		}
		return b
	}

	dir := t.TempDir()
	for name, file := range map[string][]byte{
		"pcap-le":   pcap(binary.LittleEndian),
		"pcap-be":   pcap(binary.BigEndian),
		"pcapng-le": pcapng(binary.LittleEndian),
		"pcapng-be": pcapng(binary.BigEndian),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := countCaptureFile(path, port)
		if err != nil || c.Kept != 2 || c.Other != 1 {
			t.Errorf("%s: %+v, %v; want 2 kept and 1 other", name, c, err)
		}
		if err := os.WriteFile(path, file[:len(file)-3], 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := countCaptureFile(path, port); !errors.Is(err, errTruncated) {
			t.Errorf("%s cut short: %v, want %v", name, err, errTruncated)
		}
	}
}

// TestCountJSONLines counts the command's lines: datagrams to the port,
// lines that are not, and lines that do not decode.
func TestCountJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lines")
	lines := `{"dport":40000,"len":64}
{"dport":40000,"len":64}
{"dport":40001,"len":64}
{"dport":40000,"error":"bad checksum"}
{"dport":40000,"len"
`
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := countJSONLines(path, 40000)
	if err != nil || c != (fileCount{Kept: 2, Other: 2, Malformed: 1}) {
		t.Errorf("%+v, %v", c, err)
	}
}
