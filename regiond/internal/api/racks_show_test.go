package api

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestRackSync(t *testing.T) {
	k, i, old := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("9", 64)
	wanted := []store.WantedFile{
		{SHA256: k, Size: 100, Uses: []store.FileUse{{Resource: "custom/x", Arch: "amd64/generic", Kind: "kernel-initrd", Filename: "boot-kernel"}}},
		{SHA256: i, Size: 300, Uses: []store.FileUse{{Resource: "custom/x", Arch: "amd64/generic", Kind: "kernel-initrd", Filename: "boot-initrd"}}},
	}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	type fileState struct {
		State string
		Held  int64
	}
	tests := []struct {
		name      string
		report    *store.CacheReport
		state     string
		complete  int
		held      int64
		files     []fileState
		toRemove  []string
		wantError string
	}{
		{name: "never reported", state: SyncNotReported, files: []fileState{{FileUnknown, 0}, {FileUnknown, 0}}},
		{name: "empty cache", report: &store.CacheReport{}, state: SyncIncomplete, files: []fileState{{FileMissing, 0}, {FileMissing, 0}}},
		{name: "synced", report: &store.CacheReport{Files: []store.CachedFile{{SHA256: k, Size: 100, Complete: true}, {SHA256: i, Size: 300, Complete: true}}},
			state: SyncSynced, complete: 2, held: 400, files: []fileState{{FileComplete, 100}, {FileComplete, 300}}},
		{name: "downloading", report: &store.CacheReport{Syncing: true, Files: []store.CachedFile{{SHA256: k, Size: 100, Complete: true}, {SHA256: i, Size: 50, Downloading: true}}},
			state: SyncSyncing, complete: 1, held: 150, files: []fileState{{FileComplete, 100}, {FilePartial, 50}}},
		{name: "failed with bytes kept", report: &store.CacheReport{Files: []store.CachedFile{{SHA256: k, Size: 100, Complete: true}, {SHA256: i, Size: 50, Error: "boom", ErrorTime: at}}},
			state: SyncIncomplete, complete: 1, held: 150, files: []fileState{{FileComplete, 100}, {FileFailed, 50}}, wantError: "boom"},
		{name: "retrying a failed file counts as partial", report: &store.CacheReport{Files: []store.CachedFile{{SHA256: i, Size: 50, Downloading: true, Error: "boom"}}},
			state: SyncSyncing, held: 50, files: []fileState{{FileMissing, 0}, {FilePartial, 50}}},
		{name: "all held, an old file left", report: &store.CacheReport{Files: []store.CachedFile{{SHA256: k, Size: 100, Complete: true}, {SHA256: i, Size: 300, Complete: true}, {SHA256: old, Size: 7, Complete: true}}},
			state: SyncIncomplete, complete: 2, held: 400, files: []fileState{{FileComplete, 100}, {FileComplete, 300}}, toRemove: []string{old}},
		{name: "old failure of an unwanted file is not to remove", report: &store.CacheReport{Files: []store.CachedFile{{SHA256: old, Error: "gone"}}},
			state: SyncIncomplete, files: []fileState{{FileMissing, 0}, {FileMissing, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := rackSync(wanted, tc.report)
			var files []fileState
			var errs []string
			for _, f := range got.Files {
				files = append(files, fileState{f.State, f.Held})
				if f.Error != "" && f.State == FileFailed {
					errs = append(errs, f.Error)
				}
			}
			var removed []string
			for _, f := range got.ToRemove {
				removed = append(removed, f.SHA256)
			}
			if got.State != tc.state || got.FilesComplete != tc.complete || got.BytesHeld != tc.held || got.FilesWanted != 2 || got.BytesWanted != 400 {
				t.Errorf("sync = %s %d/%d files %d/%d bytes, want %s %d/2 %d/400", got.State, got.FilesComplete, got.FilesWanted,
					got.BytesHeld, got.BytesWanted, tc.state, tc.complete, tc.held)
			}
			if diff := cmp.Diff(tc.files, files); diff != "" {
				t.Errorf("file states (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.toRemove, removed); diff != "" {
				t.Errorf("to remove (-want +got):\n%s", diff)
			}
			if tc.wantError != "" && (len(errs) != 1 || errs[0] != tc.wantError) {
				t.Errorf("errors %v, want %q", errs, tc.wantError)
			}
		})
	}
}
