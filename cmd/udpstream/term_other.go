//go:build !linux

package main

import "io"

// terminalHeight is the classic terminal's height: the receiver runs on
// Linux only, so the view is never drawn here.
func terminalHeight(io.Writer) int { return 24 }
