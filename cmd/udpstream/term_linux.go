package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// terminalHeight returns the height of the terminal w is, asked anew at
// each call so that a resized window is followed; 24 when w is not one.
func terminalHeight(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Row > 0 {
			return int(ws.Row)
		}
	}
	return 24
}
