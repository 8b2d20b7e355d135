package udpstream

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README and the CI script are read by people setting up the project:
// these tests keep them saying what the code and the tools do.

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeRaceNeedsGCC checks that the README's first screen gives
// exactly two commands, the demo and the tests, and says what the race
// detector of the second needs; and that CI installs it.
func TestReadmeRaceNeedsGCC(t *testing.T) {
	readme := readFile(t, "README.md")
	first, _, _ := strings.Cut(readme, "\n## ")
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(first, -1)
	if len(blocks) != 1 || strings.Count(blocks[0][1], "\n") != 2 ||
		!strings.Contains(blocks[0][1], "go run ./cmd/udpstream -demo") || !strings.Contains(blocks[0][1], "go test -race ./...") {
		t.Errorf("README's first screen: want one sh block of two commands, the demo and the tests; got %q", blocks)
	}
	for _, want := range []string{"gcc", "CGO_ENABLED=1"} {
		if !strings.Contains(first, want) {
			t.Errorf("README's first screen does not say the race detector needs %s", want)
		}
	}
	ci := readFile(t, ".ci/run")
	if !strings.Contains(ci, "command -v gcc") || !strings.Contains(ci, "apt-get install -y -qq gcc") {
		t.Errorf(".ci/run does not install gcc where it is missing")
	}
}
