package abi

import (
	"os"
	"strings"
	"testing"
)

// TestSpecCoversABI keeps README.md in step with the constants: every host
// function, export and error code is documented.
func TestSpecCoversABI(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	spec := string(b)
	for _, name := range Funcs {
		if !strings.Contains(spec, "### `"+name+"(") {
			t.Errorf("README.md has no section for host function %s", name)
		}
	}
	for _, name := range []string{ExportHandle, ExportInitialize, ExportStart, ExportMemory, ExportSpeaksFirst, VersionExportPrefix + "1"} {
		if !strings.Contains(spec, "`"+name) {
			t.Errorf("README.md does not mention export %s", name)
		}
	}
	for code := int32(-1); ErrorName(code) != ""; code-- {
		if !strings.Contains(spec, "| "+itoa(code)+" |") {
			t.Errorf("README.md's error table lacks %d (%s)", code, ErrorName(code))
		}
	}
}

func itoa(n int32) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
