package tlsx

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"stagecoach/internal/naming"
)

// A certificate's role in a job is a URI SAN
//
//	spiffe://stagecoach/<job>/coordinator
//	spiffe://stagecoach/<job>/worker/<name>
//
// and its Subject CN is the same path without scheme and domain
// (<job>/coordinator, <job>/worker/<name>), which is the etcd user name
// under etcd's client-certificate auth. Job ids and worker names follow
// internal/naming ([A-Za-z0-9._-]), so '/' separates them unambiguously.
// Purpose flags (server/client auth) cannot separate the roles: workers
// both serve and dial.
const (
	// IdentityScheme and IdentityDomain are the URI SAN's scheme and host.
	IdentityScheme = "spiffe"
	IdentityDomain = "stagecoach"
	// RootCN is the CN of an etcd administrator's certificate, which
	// carries no role in any job.
	RootCN = "root"
)

// Role is what a certificate may do in its job. The zero value is
// invalid.
type Role uint8

const (
	// RoleCoordinator drives the job: it may call the workers' control
	// methods.
	RoleCoordinator Role = 1 + iota
	// RoleWorker holds a stage: it may send tensors to its peers.
	RoleWorker
)

func (r Role) String() string {
	switch r {
	case RoleCoordinator:
		return "coordinator"
	case RoleWorker:
		return "worker"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Identity is a certificate's role in one job: the job's coordinator, or
// the job's worker Name (empty for the coordinator).
type Identity struct {
	Job  string
	Role Role
	Name string
}

// Coordinator is job's coordinator identity.
func Coordinator(job string) Identity { return Identity{Job: job, Role: RoleCoordinator} }

// Worker is job's identity for worker name.
func Worker(job, name string) Identity { return Identity{Job: job, Role: RoleWorker, Name: name} }

// Validate reports why id cannot be issued or trusted.
func (id Identity) Validate() error {
	if err := naming.Validate("job id", id.Job); err != nil {
		return fmt.Errorf("tlsx: identity: %w", err)
	}
	switch id.Role {
	case RoleCoordinator:
		if id.Name != "" {
			return fmt.Errorf("tlsx: identity: a coordinator has no name, got %q", id.Name)
		}
	case RoleWorker:
		if err := naming.Validate("worker name", id.Name); err != nil {
			return fmt.Errorf("tlsx: identity: %w", err)
		}
	default:
		return fmt.Errorf("tlsx: identity: unknown role %v", id.Role)
	}
	return nil
}

// Path is the identity without scheme and domain: "<job>/coordinator" or
// "<job>/worker/<name>". It is the certificate's CN and the etcd user.
func (id Identity) Path() string {
	if id.Role == RoleWorker {
		return id.Job + "/worker/" + id.Name
	}
	return id.Job + "/" + id.Role.String()
}

// String is Path.
func (id Identity) String() string { return id.Path() }

// URI is the identity's URI SAN, spiffe://stagecoach/<Path>.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: IdentityDomain, Path: "/" + id.Path()}
}

// Errors of IdentityOf and PeerIdentity, for errors.Is.
var (
	// ErrNoIdentity: the certificate carries no stagecoach role.
	ErrNoIdentity = errors.New("tlsx: certificate carries no stagecoach role")
	// ErrNoCertificate: the peer is not authenticated (plaintext, or TLS
	// without a verified client certificate).
	ErrNoCertificate = errors.New("tlsx: peer presented no verified certificate")
)

// IdentityOf reads c's role from its URI SAN. A certificate with no
// spiffe://stagecoach/ URI is ErrNoIdentity (an etcd server's or root's
// certificate); one with two, or with a malformed one, is an error naming
// the URI and what is wrong with it. The CN is not consulted: the URI
// SAN is what the CA vouched for as the role.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	var found *url.URL
	for _, u := range c.URIs {
		if u.Scheme != IdentityScheme || u.Host != IdentityDomain {
			continue
		}
		if found != nil {
			return Identity{}, fmt.Errorf("tlsx: certificate %s carries two stagecoach roles (%s and %s)", describe(c), found, u)
		}
		found = u
	}
	if found == nil {
		return Identity{}, fmt.Errorf("%w: certificate %s has no %s://%s/ URI SAN", ErrNoIdentity, describe(c), IdentityScheme, IdentityDomain)
	}
	id, err := ParseIdentityURI(found)
	if err != nil {
		return Identity{}, fmt.Errorf("tlsx: certificate %s: %w", describe(c), err)
	}
	return id, nil
}

// ParseIdentityURI parses spiffe://stagecoach/<job>/coordinator or
// spiffe://stagecoach/<job>/worker/<name>.
func ParseIdentityURI(u *url.URL) (Identity, error) {
	if u.Scheme != IdentityScheme || u.Host != IdentityDomain {
		return Identity{}, fmt.Errorf("identity URI %q: want %s://%s/<job>/<role>", u, IdentityScheme, IdentityDomain)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Identity{}, fmt.Errorf("identity URI %q: want only a path after %s://%s", u, IdentityScheme, IdentityDomain)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	var id Identity
	switch {
	case len(parts) == 2 && parts[1] == "coordinator":
		id = Coordinator(parts[0])
	case len(parts) == 3 && parts[1] == "worker":
		id = Worker(parts[0], parts[2])
	default:
		return Identity{}, fmt.Errorf("identity URI %q: want path /<job>/coordinator or /<job>/worker/<name>", u)
	}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("identity URI %q: %w", u, err)
	}
	return id, nil
}

// PeerCertificate is the verified leaf certificate of ctx's gRPC peer
// (a server handler's context), or ErrNoCertificate when the connection
// is plaintext or carries no verified client certificate.
func PeerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("%w (no peer in the context)", ErrNoCertificate)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("%w (the connection is not TLS)", ErrNoCertificate)
	}
	// VerifiedChains, not PeerCertificates: only a chain the handshake
	// verified against the CA proves anything.
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, fmt.Errorf("%w (no verified chain)", ErrNoCertificate)
	}
	return info.State.VerifiedChains[0][0], nil
}

// PeerIdentity is the role of ctx's gRPC peer: its verified certificate's
// identity (IdentityOf). Errors wrap ErrNoCertificate or ErrNoIdentity.
func PeerIdentity(ctx context.Context) (Identity, error) {
	c, err := PeerCertificate(ctx)
	if err != nil {
		return Identity{}, err
	}
	return IdentityOf(c)
}
