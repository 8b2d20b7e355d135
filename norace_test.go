//go:build !race

package udpstream

// raceEnabled reports whether the race detector is on.
const raceEnabled = false
