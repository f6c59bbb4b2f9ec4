package costmodel

import (
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"stagecoach/internal/yamlx"
)

// maxClusterBytes bounds a cluster file.
const maxClusterBytes = 64 << 20

// ParseCluster reads a cluster cost model from YAML, refusing unknown
// fields, and validates it.
func ParseCluster(data []byte) (*Cluster, error) {
	c, err := parseCluster(data)
	var inv invalidError
	if err != nil && !errors.As(err, &inv) {
		return nil, fmt.Errorf("cluster YAML: %w", err)
	}
	return c, err
}

// invalidError marks an error of a cluster that decoded but does not
// validate: it names its own field.
type invalidError struct{ error }

func (e invalidError) Unwrap() error { return e.error }

func parseCluster(data []byte) (*Cluster, error) {
	if len(data) > maxClusterBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxClusterBytes)
	}
	var c Cluster
	if err := yamlx.Strict(data, &c); err != nil {
		return nil, err
	}
	if c.Name == "" {
		c.Name = "cluster"
	}
	if err := c.Validate(); err != nil {
		return nil, invalidError{err}
	}
	return &c, nil
}

// LoadCluster reads a cluster file.
func LoadCluster(path string) (*Cluster, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Read one byte past the bound, never the whole of a larger file.
	data, err := io.ReadAll(io.LimitReader(f, maxClusterBytes+1))
	if err != nil {
		return nil, err
	}
	c, err := parseCluster(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// MarshalYAML-friendly copy: EncodeCluster writes c as YAML.
func EncodeCluster(w io.Writer, c *Cluster) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return err
	}
	return enc.Close()
}
