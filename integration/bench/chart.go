//go:build linux

package main

import (
	"fmt"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// chart draws, for allowed names over IPv4 (the common case), the qps ratio
// and the CPU per query against the list size: one line per design and
// list, plus the no-filter baseline's CPU per query.
func (r *results) chart(path string) error {
	ratio := plot.New()
	ratio.Title.Text = "qps ratio design / no filter (allowed names, IPv4)"
	ratio.X.Label.Text = "names in the list"
	ratio.Y.Label.Text = "qps ratio (median of pairs)"
	cpu := plot.New()
	cpu.Title.Text = "CPU per query (allowed names, IPv4)"
	cpu.X.Label.Text = "names in the list"
	cpu.Y.Label.Text = "µs per query (all cores)"
	var ticks []plot.Tick
	for _, n := range []int{1_000, 10_000, 100_000, 1_000_000, 10_000_000} {
		ticks = append(ticks, plot.Tick{Value: float64(n), Label: humanN(n)})
	}
	for _, p := range []*plot.Plot{ratio, cpu} {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.Add(plotter.NewGrid())
	}
	// Ratios sit near 1 and fall with cost; CPU rises with it.
	ratio.Legend.Top, ratio.Legend.Left = false, true
	cpu.Legend.Top, cpu.Legend.Left = true, true
	type series struct {
		name string
		r, c plotter.XYs
	}
	var order []string
	lines := map[string]*series{}
	base := map[int][]float64{}
	for _, c := range r.cells() {
		if c.Mode != modeAllowed || c.Family != "ipv4" {
			continue
		}
		name := c.Design + " " + c.List
		s := lines[name]
		if s == nil {
			s = &series{name: name}
			lines[name] = s
			order = append(order, name)
		}
		s.r = append(s.r, plotter.XY{X: float64(c.N), Y: median(c.Ratio)})
		s.c = append(s.c, plotter.XY{X: float64(c.N), Y: median(c.CPUB)})
		base[c.N] = append(base[c.N], c.CPUA...)
	}
	var ratioArgs, cpuArgs []any
	for _, name := range order {
		s := lines[name]
		ratioArgs = append(ratioArgs, name, s.r)
		cpuArgs = append(cpuArgs, name, s.c)
	}
	if len(base) > 0 {
		var ns []int
		for n := range base {
			ns = append(ns, n)
		}
		slices.Sort(ns)
		var b plotter.XYs
		for _, n := range ns {
			b = append(b, plotter.XY{X: float64(n), Y: median(base[n])})
		}
		cpuArgs = append(cpuArgs, "no filter", b)
	}
	if len(ratioArgs) > 0 {
		if err := plotutil.AddLinePoints(ratio, ratioArgs...); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		if err := plotutil.AddLinePoints(cpu, cpuArgs...); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
	}
	ratio.Y.Min = 0
	if ratio.Y.Max < 1.05 {
		ratio.Y.Max = 1.05
	}
	cpu.Y.Min = 0
	for _, p := range []*plot.Plot{ratio, cpu} {
		// Some room around the points, and a valid log axis without data.
		if len(ratioArgs) == 0 {
			p.X.Min, p.X.Max = 1e4, 1e6
		}
		p.X.Min, p.X.Max = p.X.Min/2, p.X.Max*2
	}
	img := vgimg.New(16*vg.Inch, 6*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 2, PadY: vg.Inch / 4, PadTop: vg.Inch / 4, PadBottom: vg.Inch / 4, PadLeft: vg.Inch / 4, PadRight: vg.Inch / 4}
	cs := plot.Align([][]*plot.Plot{{ratio, cpu}}, tiles, dc)
	ratio.Draw(cs[0][0])
	cpu.Draw(cs[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
