package top

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
)

// Source takes a status snapshot (from the master's control socket).
type Source func() (Sample, error)

// Print writes a frame every interval until ctx ends or frames have been
// written (0: no bound): what top does when its output is not a terminal.
func Print(ctx context.Context, w io.Writer, src Source, every time.Duration, frames int) error {
	prev, err := src()
	if err != nil {
		return err
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 0; frames == 0 || n < frames; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := src()
		if err != nil {
			return err
		}
		Render(w, Compute(prev, cur), "id", "")
		fmt.Fprintln(w)
		prev = cur
	}
	return nil
}

// Live shows the frames on a terminal, refreshed every interval, until q
// (or ctrl-c); s cycles the sort order, g the group shown.
func Live(ctx context.Context, in io.Reader, out io.Writer, src Source, every time.Duration) error {
	first, err := src()
	if err != nil {
		return err
	}
	m := &model{src: src, every: every, prev: first, frame: Compute(first, first), sortBy: Sorts[0]}
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out), tea.WithAltScreen())
	_, err = p.Run()
	if err == tea.ErrProgramKilled && ctx.Err() != nil {
		return nil
	}
	return err
}

type tick struct{}

type model struct {
	src    Source
	every  time.Duration
	prev   Sample
	frame  Frame
	sortBy string
	group  string
	err    error
}

func (m *model) Init() tea.Cmd { return m.next() }

func (m *model) next() tea.Cmd {
	return tea.Tick(m.every, func(time.Time) tea.Msg { return tick{} })
}

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tick:
		cur, err := m.src()
		m.err = err
		if err == nil {
			m.frame, m.prev = Compute(m.prev, cur), cur
		}
		return m, m.next()
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		case "s":
			m.sortBy = Sorts[(slices.Index(Sorts, m.sortBy)+1)%len(Sorts)]
		case "g":
			names := append([]string{""}, m.frame.GroupNames()...)
			m.group = names[(slices.Index(names, m.group)+1)%len(names)]
		}
	}
	return m, nil
}

func (m *model) View() string {
	var b strings.Builder
	Render(&b, m.frame, m.sortBy, m.group)
	if m.err != nil {
		fmt.Fprintf(&b, "\nstatus: %v\n", m.err)
	}
	b.WriteString("\nq quit · s sort · g group\n")
	return b.String()
}
