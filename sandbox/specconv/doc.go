// Package specconv is the container half of a sandbox's plan: it turns a
// resolved profile and a launch's inputs into everything the container is,
// the way runc keeps libcontainer/specconv apart from the container's
// lifecycle.
//
//	policy.Profile + Input ──Convert──► Container
//	    ├ identity: ResolveUser in the view's /etc, checked against the host's accounts
//	    ├ PlanView: the host's system directories (or an image), exposed paths, volumes
//	    ├ BuildEnv, CheckCommand, BlockedPaths: the environment and the command rules
//	    ├ PlanProtect: the protected paths of the workspace and writable volumes
//	    ├ the generated passwd, group, resolv.conf, hosts, CA bundle
//	    └ BuildSpec (LoadSeccomp): the OCI runtime spec
//
// It reads the host — account databases, the view's files, seccomp profile
// files, whether the sandbox user may write a directory — and changes
// nothing: the launcher's apply step (package sandbox) makes the root, the
// files and the bundle the Container describes.
package specconv
