package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// errNotLoggedIn is the message shown when no login is saved and the environment has none.
var errNotLoggedIn = errors.New("not logged in: run ferrite login --url URL --token TOKEN (or set FERRITE_URL and FERRITE_TOKEN)")

// login is what `ferrite login` saves.
type login struct {
	URL   string `json:"url"`
	Token string `json:"token"`
}

// loginSource says where the credentials in use came from, for error hints.
type loginSource struct {
	login
	fromEnv bool   // FERRITE_URL or FERRITE_TOKEN was used
	path    string // the saved login file, if one was read
}

// loginPath returns $XDG_CONFIG_HOME/ferrite/login.json, else ~/.config/ferrite/login.json.
func loginPath(env func(string) string) (string, error) {
	// The XDG spec says relative paths in XDG_CONFIG_HOME are invalid and to be ignored.
	if dir := env("XDG_CONFIG_HOME"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, "ferrite", "login.json"), nil
	}
	home := env("HOME")
	if home == "" {
		return "", errors.New("cannot find where to keep the login: neither XDG_CONFIG_HOME nor HOME is set")
	}
	return filepath.Join(home, ".config", "ferrite", "login.json"), nil
}

// saveLogin writes l to path with mode 0600 (directory 0700), atomically.
func saveLogin(path string, l login) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save login: %w", err)
	}
	f, err := os.CreateTemp(dir, ".login-*.json") // created 0600
	if err != nil {
		return fmt.Errorf("save login: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save login to %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save login to %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save login to %s: %w", path, err)
	}
	return nil
}

// loadLogin reads the saved login, if any, and applies FERRITE_URL and
// FERRITE_TOKEN over it. Without a URL and a token it returns errNotLoggedIn.
func loadLogin(env func(string) string) (loginSource, error) {
	var src loginSource
	envURL, envToken := env("FERRITE_URL"), env("FERRITE_TOKEN")
	// Only look at the file when the environment does not supply everything,
	// so that a broken or unreadable file does not get in the way of env use.
	if envURL == "" || envToken == "" {
		path, err := loginPath(env)
		if err != nil && envURL == "" && envToken == "" {
			return src, errNotLoggedIn
		}
		if err == nil {
			b, err := os.ReadFile(path)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return src, fmt.Errorf("read saved login: %w", err)
			default:
				if err := json.Unmarshal(b, &src.login); err != nil {
					return src, fmt.Errorf("read saved login %s: %w (run ferrite login again)", path, err)
				}
				src.path = path
			}
		}
	}
	if envURL != "" {
		src.URL, src.fromEnv = envURL, true
	}
	if envToken != "" {
		src.Token, src.fromEnv = envToken, true
	}
	if src.URL == "" || src.Token == "" {
		return src, errNotLoggedIn
	}
	return src, nil
}
