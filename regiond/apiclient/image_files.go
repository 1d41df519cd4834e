package apiclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// OpenImageFile streams a stored boot resource file by its sha256 (GET
// /api/v1/images/files/{sha256}) and returns its size. The region cuts the
// connection when the stored content does not match, so a body shorter than
// the size is an error (io.ErrUnexpectedEOF) to the reader.
func (c *Client) OpenImageFile(ctx context.Context, sha256hex string) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint(nil, "images", "files", sha256hex), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("image file %s: %w", sha256hex, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("image file %s: %w", sha256hex, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, fmt.Errorf("image file %s: %w", sha256hex, apiError(req, resp))
	}
	return resp.Body, resp.ContentLength, nil
}
