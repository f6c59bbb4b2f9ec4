package etcdx

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd authentication for Stagecoach jobs.
//
// With client-certificate authentication (etcd's --client-cert-auth), the
// Subject CN of the certificate a client presents is its etcd user; the
// users below have no password. A job's users follow the certificates'
// naming convention:
//
//	root                  the etcd administrator (etcd's root role)
//	<job>/coordinator     every coordinator of the job (leader and standbys)
//	<job>/worker/<name>   worker <name> of the job
//
// and its roles, of the same names as the users they belong to, grant:
//
//	<job>/coordinator     read and write on /stagecoach/<job>/ (the whole job)
//	<job>/worker/<name>   read and write on /stagecoach/<job>/members/<name> only
//	                      (its registration: put, and the lease's keepalive and
//	                      time-to-live checks, which etcd permits to a user that
//	                      may write, resp. read, every key bound to the lease),
//	                      read on /stagecoach/<job>/leader/ (the election, to
//	                      check a fence against the leader key)
//
// so a worker can neither write another worker's registration nor the
// iteration, commit, plan or checkpoint keys, and nothing of one job can
// read or watch another job's keys. Granting a lease needs no permission
// in etcd (any authenticated user may), revoking it needs write permission
// on every key bound to it: a worker can revoke only its own.
//
// etcd has no permission templated on the user's name, so a worker's user
// and role are created per worker name by an administrator (the root
// user) before the worker joins: SetupAuth (`stagecoach etcd init-auth`)
// is idempotent and adds the workers it is given to a job set up before.

// RootUser is etcd's administrator: a client whose certificate has CN
// root may change users, roles and permissions once auth is on.
const RootUser = "root"

// CoordinatorUser is the etcd user, and the certificate CN, of job's
// coordinators.
func CoordinatorUser(job string) string { return job + "/coordinator" }

// WorkerUser is the etcd user, and the certificate CN, of job's worker
// name.
func WorkerUser(job, name string) string { return job + "/worker/" + name }

// AuthSpec names the etcd users of one job. Zero-valued user names follow
// the convention (CoordinatorUser, WorkerUser).
type AuthSpec struct {
	// Job is the job id (required).
	Job string
	// Coordinator is the user of the job's coordinators; default
	// CoordinatorUser(Job).
	Coordinator string
	// Workers are the job's worker names; Users maps a worker name to
	// its user when it is not WorkerUser(Job, name) (certificates issued
	// under another naming).
	Workers []string
	Users   map[string]string
}

// check validates s and fills the default user names.
func (s AuthSpec) check() (AuthSpec, Keys, error) {
	k, err := NewKeys(s.Job)
	if err != nil {
		return s, Keys{}, err
	}
	if s.Coordinator == "" {
		s.Coordinator = CoordinatorUser(s.Job)
	}
	users := map[string]string{}
	seen := map[string]bool{RootUser: true, s.Coordinator: true}
	if s.Coordinator == RootUser {
		return s, k, fmt.Errorf("etcdx: job %s: the coordinator's user cannot be %s", s.Job, RootUser)
	}
	for _, n := range s.Workers {
		if err := ValidateWorkerName(n); err != nil {
			return s, k, err
		}
		u := s.Users[n]
		if u == "" {
			u = WorkerUser(s.Job, n)
		}
		if seen[u] {
			return s, k, fmt.Errorf("etcdx: job %s: worker %s's user %q is taken (root, the coordinator or another worker)", s.Job, n, u)
		}
		seen[u] = true
		users[n] = u
	}
	s.Users = users
	return s, k, nil
}

// AuthReport is what SetupAuth did.
type AuthReport struct {
	// Users created, and those that existed already (left as they were
	// apart from the role grant).
	Created, Existed []string
	// Enabled is true when this call turned auth on; false when it was
	// on already.
	Enabled bool
	// Unexpected lists grants SetupAuth did not make and would not: a
	// user of the job holding another role, or another user holding
	// root or one of the job's roles (set up by hand, or by someone who
	// reached etcd before auth was on).
	Unexpected []string
}

// SetupAuth creates the root user, the job's coordinator role and user
// and a role and user per worker (see the package's etcd authentication
// comment), then turns auth on. It is idempotent: run again with more
// workers it adds them. Once auth is on, only the root user may run it
// (cli presenting a certificate with CN root); before, any client may,
// which is how an embedded etcd's owner sets it up.
func SetupAuth(ctx context.Context, cli *clientv3.Client, spec AuthSpec) (AuthReport, error) {
	var rep AuthReport
	spec, k, err := spec.check()
	if err != nil {
		return rep, err
	}
	wrap := func(what string, err error) error {
		if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) {
			return fmt.Errorf("etcdx: %s: %w (etcd auth is on: run this with the root certificate, CN %s)", what, err, RootUser)
		}
		return fmt.Errorf("etcdx: %s: %w", what, err)
	}
	addUser := func(name string) error {
		_, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
		switch {
		case err == nil:
			rep.Created = append(rep.Created, name)
		case errors.Is(err, rpctypes.ErrUserAlreadyExist):
			rep.Existed = append(rep.Existed, name)
		default:
			return wrap("add user "+name, err)
		}
		return nil
	}
	addRole := func(name string, perms ...perm) error {
		if _, err := cli.RoleAdd(ctx, name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return wrap("add role "+name, err)
		}
		for _, p := range perms {
			if _, err := cli.RoleGrantPermission(ctx, name, p.key, p.end, p.typ); err != nil {
				return wrap(fmt.Sprintf("grant role %s %s on %s", name, authpb.Permission_Type(p.typ), p.describe()), err)
			}
		}
		return nil
	}
	grant := func(user, role string) error {
		if _, err := cli.UserGrantRole(ctx, user, role); err != nil {
			return wrap(fmt.Sprintf("grant role %s to user %s", role, user), err)
		}
		return nil
	}
	if err := addUser(RootUser); err != nil {
		return rep, err
	}
	if err := grant(RootUser, "root"); err != nil {
		return rep, err
	}
	coord := spec.Coordinator
	if err := addRole(CoordinatorUser(spec.Job), prefixPerm(k.Prefix(), clientv3.PermissionType(clientv3.PermReadWrite))); err != nil {
		return rep, err
	}
	if err := addUser(coord); err != nil {
		return rep, err
	}
	if err := grant(coord, CoordinatorUser(spec.Job)); err != nil {
		return rep, err
	}
	names := append([]string(nil), spec.Workers...)
	sort.Strings(names)
	for _, n := range names {
		role := WorkerUser(spec.Job, n)
		if err := addRole(role,
			perm{key: k.Member(n), typ: clientv3.PermissionType(clientv3.PermReadWrite)},
			prefixPerm(k.ElectionPrefix(), clientv3.PermissionType(clientv3.PermRead))); err != nil {
			return rep, err
		}
		if err := addUser(spec.Users[n]); err != nil {
			return rep, err
		}
		if err := grant(spec.Users[n], role); err != nil {
			return rep, err
		}
	}
	want := map[string]string{RootUser: "root", coord: CoordinatorUser(spec.Job)}
	for _, n := range names {
		want[spec.Users[n]] = WorkerUser(spec.Job, n)
	}
	if rep.Unexpected, err = unexpectedGrants(ctx, cli, spec.Job, want); err != nil {
		return rep, wrap("list users", err)
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return rep, wrap("read auth status", err)
	}
	if !st.Enabled {
		if _, err := cli.AuthEnable(ctx); err != nil {
			return rep, wrap("enable auth", err)
		}
		rep.Enabled = true
	}
	return rep, nil
}

// unexpectedGrants lists every user's roles that differ from want (user
// to its one role) for the job's users, and any other user holding root
// or a role of job.
func unexpectedGrants(ctx context.Context, cli *clientv3.Client, job string, want map[string]string) ([]string, error) {
	users, err := cli.UserList(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range users.Users {
		got, err := cli.UserGet(ctx, u)
		if err != nil {
			return nil, err
		}
		if role, ours := want[u]; ours {
			if len(got.Roles) != 1 || got.Roles[0] != role {
				out = append(out, fmt.Sprintf("user %s holds roles %v, want only %s", u, got.Roles, role))
			}
			continue
		}
		for _, r := range got.Roles {
			if r == "root" || r == CoordinatorUser(job) || strings.HasPrefix(r, job+"/worker/") {
				out = append(out, fmt.Sprintf("user %s holds role %s", u, r))
			}
		}
	}
	return out, nil
}

// AuthEnabled reports whether etcd checks permissions. Any client may ask.
func AuthEnabled(ctx context.Context, cli *clientv3.Client) (bool, error) {
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("etcdx: read auth status: %w", err)
	}
	return st.Enabled, nil
}

// perm is one permission of a role: key alone, or the range [key, end).
type perm struct {
	key, end string
	typ      clientv3.PermissionType
}

func prefixPerm(prefix string, typ clientv3.PermissionType) perm {
	return perm{key: prefix, end: clientv3.GetPrefixRangeEnd(prefix), typ: typ}
}

func (p perm) describe() string {
	if p.end == "" {
		return p.key
	}
	return strings.TrimSuffix(p.key, "/") + "/*"
}
