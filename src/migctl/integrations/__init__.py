"""Integrations with cluster software (Kubernetes GPU Operator, ...)."""
