// Command rowcmp checks that two JSON-lines files hold the same rows as a
// multiset: each line is parsed as a JSON object and re-encoded canonically
// (keys sorted, numbers as float64), so column order and number formatting
// do not matter; line order does not matter either.
//
//	rowcmp sealflow.jsonl benthos.jsonl
//
// It exits 0 and prints the row count when the files agree, and exits 1
// naming a row that differs otherwise.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: rowcmp A.jsonl B.jsonl")
		os.Exit(2)
	}
	n, err := compareFiles(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintf(os.Stderr, "rowcmp: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("rowcmp: %d rows, same multiset\n", n)
}

func compareFiles(a, b string) (int, error) {
	count := map[string]int{}
	na, err := readInto(a, count, 1)
	if err != nil {
		return 0, err
	}
	nb, err := readInto(b, count, -1)
	if err != nil {
		return 0, err
	}
	for row, c := range count {
		switch {
		case c > 0:
			return 0, fmt.Errorf("%s has %d more of row %s than %s (%d vs %d rows)", a, c, row, b, na, nb)
		case c < 0:
			return 0, fmt.Errorf("%s has %d more of row %s than %s (%d vs %d rows)", b, -c, row, a, nb, na)
		}
	}
	return na, nil
}

// readInto adds sign to count[canonical row] for every line of the file.
func readInto(path string, count map[string]int, sign int) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return canonicalRows(f, path, func(row string) { count[row] += sign })
}

// canonicalRows calls add with the canonical form of every non-empty line.
func canonicalRows(r io.Reader, name string, add func(string)) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	n := 0
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return n, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		c, err := json.Marshal(m) // maps marshal with sorted keys
		if err != nil {
			return n, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		add(string(c))
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}
