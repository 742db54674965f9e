// Command chart draws bench/run.sh's results as SVG: requests per second
// and p99 latency per server, one panel per view and mode, from the raw
// rows run.sh keeps with RAW=FILE (medians over the rounds). It is a
// module of its own, so that the plotting library stays out of
// wcluster's dependencies.
//
//	go run . -rows /tmp/rows.txt -out ../charts
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

type key struct{ view, mode, server string }

func main() {
	rows := flag.String("rows", "", "raw rows of bench/run.sh (RAW=FILE)")
	out := flag.String("out", "charts", "folder to write the SVGs to")
	title := flag.String("title", "", "added to each chart's title (e.g. the date and commit)")
	format := flag.String("format", "svg", "svg or png")
	flag.Parse()
	if *rows == "" {
		log.Fatal("chart: give -rows FILE (bench/run.sh with RAW=FILE writes it)")
	}
	rps, p99, order, err := read(*rows)
	if err != nil {
		log.Fatalf("chart: %v", err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatalf("chart: %v", err)
	}
	panels := map[string]bool{}
	for k := range rps {
		panels[k.view+" "+k.mode] = true
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for p := range panels {
			if !yield(p) {
				return
			}
		}
	})
	for _, p := range names {
		view, mode, _ := strings.Cut(p, " ")
		for _, m := range []struct {
			what, unit string
			vals       map[key][]float64
		}{{"throughput", "requests per second (median)", rps}, {"p99", "p99 latency, ms (median)", p99}} {
			file := filepath.Join(*out, fmt.Sprintf("%s-%s-%s.%s", m.what, view, mode, *format))
			if err := bars(file, strings.TrimSuffix(fmt.Sprintf("%s, %s, %s; %s", m.what, view, mode, *title), "; "), m.unit, view, mode, order, m.vals); err != nil {
				log.Fatalf("chart: %v", err)
			}
			fmt.Println(file)
		}
	}
}

// read parses "view round server mode req/s p50 p99 errors load1" rows.
func read(path string) (rps, p99 map[key][]float64, order []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	rps, p99 = map[key][]float64{}, map[key][]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 7 || strings.HasPrefix(fl[0], "#") {
			continue
		}
		v, err := strconv.ParseFloat(fl[4], 64)
		if err != nil || v <= 0 {
			continue // a failed measurement
		}
		k := key{fl[0], fl[3], fl[2]}
		rps[k] = append(rps[k], v)
		if ms, ok := millis(fl[6]); ok {
			p99[k] = append(p99[k], ms)
		}
		if !slices.Contains(order, fl[2]) {
			order = append(order, fl[2])
		}
	}
	return rps, p99, order, sc.Err()
}

// millis reads wrk's latency text (850.00us, 1.20ms, 2.00s).
func millis(s string) (float64, bool) {
	for _, u := range []struct {
		suffix string
		scale  float64
	}{{"us", 1e-3}, {"ms", 1}, {"s", 1e3}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseFloat(n, 64)
			return v * u.scale, err == nil
		}
	}
	return 0, false
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func bars(file, title, unit, view, mode string, order []string, vals map[key][]float64) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	var vs plotter.Values
	var labels []string
	for _, s := range order {
		if v, ok := vals[key{view, mode, s}]; ok && len(v) > 0 {
			vs = append(vs, median(v))
			labels = append(labels, s)
		}
	}
	if len(vs) == 0 {
		return nil
	}
	b, err := plotter.NewBarChart(vs, vg.Points(28))
	if err != nil {
		return err
	}
	b.Color = color.RGBA{R: 0x33, G: 0x66, B: 0x99, A: 0xff}
	b.LineStyle.Width = 0
	p.Add(b)
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = 0.5
	p.X.Tick.Label.XAlign = -0.9
	p.Y.Min = 0
	return p.Save(max(14*vg.Centimeter, vg.Length(80+len(labels)*80)), 9*vg.Centimeter, file)
}
