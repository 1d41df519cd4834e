package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// command is one ferrite subcommand, e.g. "subnets create".
type command struct {
	name     string // words after "ferrite"
	synopsis string // arguments shown in usage
	summary  string // one line
	// setup defines the command's flags on fs and returns the action, which
	// receives the positional arguments left after the flags.
	setup func(fs *flag.FlagSet) action
}

type action func(ctx context.Context, a *app, args []string) error

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// app is what actions use: output streams, environment, and the API client.
type app struct {
	stdout, stderr io.Writer
	env            func(string) string
	httpClient     *http.Client // nil: http.DefaultClient
	login          loginSource  // set by client()
}

// client returns an API client for the saved login or the environment.
func (a *app) client() (*apiclient.Client, error) {
	src, err := loadLogin(a.env)
	if err != nil {
		return nil, err
	}
	a.login = src
	return a.newClient(src.URL, src.Token)
}

func (a *app) newClient(url, token string) (*apiclient.Client, error) {
	opts := []apiclient.Option{apiclient.WithUserAgent("ferrite-cli")}
	if a.httpClient != nil {
		opts = append(opts, apiclient.WithHTTPClient(a.httpClient))
	}
	c, err := apiclient.New(url, token, opts...)
	if err != nil && a.login.fromEnv {
		return nil, fmt.Errorf("%w (check FERRITE_URL)", err)
	}
	return c, err
}

// explain adds a hint to errors an operator can act on.
func (a *app) explain(err error) string {
	msg := err.Error()
	if apiclient.IsStatus(err, http.StatusUnauthorized) {
		if a.login.fromEnv {
			return msg + "\nthe API rejected the token: check FERRITE_TOKEN and FERRITE_URL, or log in again with ferrite login --url URL --token TOKEN"
		}
		return msg + "\nthe API rejected the saved token: log in again with ferrite login --url URL --token TOKEN"
	}
	return msg
}

// run is the whole CLI: args are the arguments after the program name.
// It returns the exit status: 0 success, 1 failure, 2 usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	return runWith(ctx, &app{stdout: stdout, stderr: stderr, env: env}, args)
}

func runWith(ctx context.Context, a *app, args []string) int {
	cmds := commands()
	if len(args) == 0 {
		writeUsage(a.stderr, cmds)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		topic := args[1:]
		if args[0] != "help" || len(topic) == 0 {
			writeUsage(a.stdout, cmds)
			return 0
		}
		if c := find(cmds, topic); c != nil && len(strings.Fields(c.name)) == len(topic) {
			writeCommandUsage(a.stdout, c)
			return 0
		}
		if group := groupOf(cmds, topic[0]); len(topic) == 1 && len(group) > 0 {
			writeGroupUsage(a.stdout, topic[0], group)
			return 0
		}
		fmt.Fprintf(a.stderr, "ferrite: no help for %q: run ferrite help\n", strings.Join(topic, " "))
		return 2
	}

	c := find(cmds, args)
	if c == nil {
		group := groupOf(cmds, args[0])
		if len(group) == 0 {
			fmt.Fprintf(a.stderr, "ferrite: unknown command %q\n\n", args[0])
			writeUsage(a.stderr, cmds)
			return 2
		}
		if len(args) > 1 && isHelpFlag(args[1]) {
			writeGroupUsage(a.stdout, args[0], group)
			return 0
		}
		if len(args) == 1 {
			fmt.Fprintf(a.stderr, "ferrite %s: missing subcommand\n\n", args[0])
		} else {
			fmt.Fprintf(a.stderr, "ferrite %s: unknown subcommand %q\n\n", args[0], args[1])
		}
		writeGroupUsage(a.stderr, args[0], group)
		return 2
	}

	rest := args[len(strings.Fields(c.name)):]
	fs := flag.NewFlagSet("ferrite "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and usage are printed below
	act := c.setup(fs)
	positional, err := parseInterspersed(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		writeCommandUsage(a.stdout, c)
		return 0
	}
	if err == nil {
		err = act(ctx, a, positional)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(a.stderr, "ferrite %s: %v\nRun 'ferrite %s -h' for usage.\n", c.name, err, c.name)
		return 2
	default:
		fmt.Fprintf(a.stderr, "ferrite: %s\n", a.explain(err))
		return 1
	}
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help" || s == "--h"
}

// find returns the command named by the first words of args, or nil.
func find(cmds []command, args []string) *command {
	for i := range cmds {
		words := strings.Fields(cmds[i].name)
		if len(args) >= len(words) && equal(args[:len(words)], words) {
			return &cmds[i]
		}
	}
	return nil
}

// groupOf returns the commands whose first word is group ("subnets").
func groupOf(cmds []command, group string) []command {
	var out []command
	for _, c := range cmds {
		if w := strings.Fields(c.name); len(w) > 1 && w[0] == group {
			out = append(out, c)
		}
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// parseInterspersed parses flags anywhere among the arguments (the flag
// package stops at the first non-flag), so "config get KEY -o json" works.
// Everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// writeUsage prints the top-level help.
func writeUsage(w io.Writer, cmds []command) {
	var b strings.Builder
	b.WriteString(`Usage: ferrite COMMAND [FLAGS] [ARGS]

ferrite drives a Ferrite region controller through its REST API (/api/v1).

Commands:
`)
	for _, c := range cmds {
		fmt.Fprintf(&b, "  %s\n        %s\n", strings.TrimSpace(c.name+" "+c.synopsis), c.summary)
	}
	b.WriteString(`
Listings print an aligned table; -o json prints the API's JSON instead.
Flags may come before or after arguments; use -- before a value that starts with "-".
Run 'ferrite COMMAND -h' (or 'ferrite help COMMAND') for a command's flags.

Login: ferrite login saves the URL and token to $XDG_CONFIG_HOME/ferrite/login.json
(default ~/.config/ferrite/login.json, mode 0600). FERRITE_URL and FERRITE_TOKEN,
when set, are used instead of the saved values.

Exit status: 0 on success, 1 on failure, 2 on a usage error.
`)
	io.WriteString(w, b.String())
}

func writeGroupUsage(w io.Writer, group string, cmds []command) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: ferrite %s SUBCOMMAND [FLAGS] [ARGS]\n\nSubcommands:\n", group)
	for _, c := range cmds {
		fmt.Fprintf(&b, "  %s\n        %s\n", strings.TrimSpace(c.name+" "+c.synopsis), c.summary)
	}
	fmt.Fprintf(&b, "\nRun 'ferrite %s SUBCOMMAND -h' for a subcommand's flags.\n", group)
	io.WriteString(w, b.String())
}

func writeCommandUsage(w io.Writer, c *command) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: ferrite %s\n\n%s\n", strings.TrimSpace(c.name+" "+c.synopsis), c.summary)
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	c.setup(fs)
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "output" { // alias of -o
			return
		}
		if first {
			b.WriteString("\nFlags:\n")
			first = false
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  %s%s", dash, f.Name)
		if name != "" {
			fmt.Fprintf(&b, " %s", name)
		}
		fmt.Fprintf(&b, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "[]" && f.DefValue != "false" {
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	io.WriteString(w, b.String())
}
