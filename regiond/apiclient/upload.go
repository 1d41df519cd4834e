package apiclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
)

// UploadImage uploads a kernel and an initrd as image name (e.g.
// "custom/ephemeral") for arch (e.g. "amd64/generic") with POST
// /api/v1/images. An image with the same name and arch is replaced.
//
// The multipart body is produced through an io.Pipe while it is sent, so the
// files are streamed and never held in memory. Reading kernel or initrd fails
// the upload with that error.
func (c *Client) UploadImage(ctx context.Context, name, arch string, kernel, initrd io.Reader) (Image, error) {
	if name == "" || arch == "" {
		return Image{}, errors.New("upload image: name and arch are required")
	}
	if kernel == nil || initrd == nil {
		return Image{}, errors.New("upload image: kernel and initrd are required")
	}
	write := func(mw *multipart.Writer) error { return writeImageForm(mw, name, arch, kernel, initrd) }
	img, err := c.postMultipart(ctx, write)
	if err != nil {
		return Image{}, fmt.Errorf("upload image %s: %w", name, err)
	}
	return img, nil
}

var errUploadStopped = errors.New("upload stopped")

// writeImageForm writes the multipart form of an image upload.
func writeImageForm(mw *multipart.Writer, name, arch string, kernel, initrd io.Reader) error {
	if err := mw.WriteField("name", name); err != nil {
		return err
	}
	if err := mw.WriteField("arch", arch); err != nil {
		return err
	}
	for _, f := range []struct {
		field, filename string
		r               io.Reader
	}{
		{"kernel", "boot-kernel", kernel},
		{"initrd", "boot-initrd", initrd},
	} {
		part, err := mw.CreateFormFile(f.field, f.filename)
		if err != nil {
			return err
		}
		if _, err := io.Copy(part, readerOf{f.field, f.r}); err != nil {
			return err
		}
	}
	return mw.Close()
}

// readError is a failure to read one of the uploaded files (as opposed to a
// failure to send them).
type readError struct {
	field string
	err   error
}

func (e *readError) Error() string { return fmt.Sprintf("read %s: %v", e.field, e.err) }
func (e *readError) Unwrap() error { return e.err }

// readerOf tags the read errors of r as *readError.
type readerOf struct {
	field string
	r     io.Reader
}

func (r readerOf) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = &readError{r.field, err}
	}
	return n, err
}

// BootloaderFile is one file of a boot loader upload: Name is the name the
// racks serve it under (e.g. "bootx64.efi"), Content its bytes.
type BootloaderFile struct {
	Name    string
	Content io.Reader
}

// UploadBootloader uploads boot loaders as the kind "bootloader" resource
// name (e.g. "bootloader/uefi") for arch with POST /api/v1/images: every
// rack serves each file at the root of its TFTP and HTTP trees under its
// Name. A resource with the same name and arch is replaced; uploading
// identical files again changes nothing on the region. Files are streamed.
func (c *Client) UploadBootloader(ctx context.Context, name, arch string, files []BootloaderFile) (Image, error) {
	if name == "" || arch == "" {
		return Image{}, errors.New("upload bootloader: name and arch are required")
	}
	if len(files) == 0 {
		return Image{}, fmt.Errorf("upload bootloader %s: no files", name)
	}
	for _, f := range files {
		if f.Name == "" || f.Content == nil {
			return Image{}, fmt.Errorf("upload bootloader %s: every file needs a name and content", name)
		}
	}
	write := func(mw *multipart.Writer) error {
		for _, kv := range [][2]string{{"name", name}, {"arch", arch}, {"kind", "bootloader"}} {
			if err := mw.WriteField(kv[0], kv[1]); err != nil {
				return err
			}
		}
		for _, f := range files {
			part, err := mw.CreateFormFile("file", f.Name)
			if err != nil {
				return err
			}
			if _, err := io.Copy(part, readerOf{f.Name, f.Content}); err != nil {
				return err
			}
		}
		return mw.Close()
	}
	img, err := c.postMultipart(ctx, write)
	if err != nil {
		return Image{}, fmt.Errorf("upload bootloader %s: %w", name, err)
	}
	return img, nil
}

// postMultipart POSTs to /api/v1/images the form write produces, streamed
// through a pipe.
func (c *Client) postMultipart(ctx context.Context, write func(*multipart.Writer) error) (Image, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(nil, "images"), pr)
	if err != nil {
		return Image{}, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	writeErr := make(chan error, 1)
	go func() {
		err := write(mw)
		// Ends the body for the transport: EOF on success, err otherwise.
		pw.CloseWithError(err)
		writeErr <- err
	}()
	var out Image
	err = c.do(req, &out)
	// Unblock the writer if the transport stopped reading early (an error
	// answer before the whole body was sent, a cancelled context, ...).
	pr.CloseWithError(errUploadStopped)
	werr := <-writeErr
	if err != nil {
		var rerr *readError
		if errors.As(werr, &rerr) {
			// The transport failed because a file could not be read: say so plainly.
			return Image{}, rerr
		}
		return Image{}, err
	}
	return out, nil
}
