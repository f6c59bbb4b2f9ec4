package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

// maxClusterBytes bounds a cluster file.
const maxClusterBytes = 64 << 20

// ParseCluster reads a cluster cost model from YAML, refusing unknown
// fields, and validates it.
func ParseCluster(data []byte) (*Cluster, error) {
	if len(data) > maxClusterBytes {
		return nil, fmt.Errorf("cluster file is larger than %d bytes", maxClusterBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Cluster
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("cluster file is empty")
		}
		return nil, fmt.Errorf("cluster YAML: %w", err)
	}
	if c.Name == "" {
		c.Name = "cluster"
	}
	if err := c.Validate(); err != nil {
		return nil, err
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
	c, err := ParseCluster(data)
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
