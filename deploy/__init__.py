"""Deployment: the `keel` command line, the local stack and the cluster manifests."""
