"""Kubernetes name syntax, checked before anything is printed or sent (bad input is one line, not an object
the API server refuses later, nor a printed `kubectl` command a shell would split).

Rules from k8s.io/apimachinery ``pkg/util/validation/validation.go`` (``IsDNS1123Label``,
``IsDNS1123Subdomain``, ``IsValidLabelValue``, ``IsConfigMapKey``) and the Kubernetes documentation's
"Object Names and IDs" (https://kubernetes.io/docs/concepts/overview/working-with-objects/names/).
Lengths are counted in bytes, as Go's ``len`` counts them (every valid name is ASCII anyway).
"""

from __future__ import annotations

import re

from migctl.errors import UserError

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(_LABEL + r"(\." + _LABEL + r")*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_CONFIGMAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")

RULES = {
    "namespace": (_DNS1123_LABEL, 63, "an RFC 1123 label: at most 63 lowercase letters, digits and '-', "
                  "starting and ending with a letter or digit"),
    "name": (_DNS1123_SUBDOMAIN, 253, "an RFC 1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', "
             "starting and ending with a letter or digit"),
    "label value": (_LABEL_VALUE, 63, "at most 63 letters, digits, '-', '_' and '.', starting and ending with a "
                    "letter or digit"),
    "key": (_CONFIGMAP_KEY, 253, "at most 253 letters, digits, '-', '_' and '.', not '.', '..' or starting "
            "with '..'"),
}


def problem(value: str, kind: str) -> str | None:
    """Why ``value`` is not a valid Kubernetes ``kind`` (a key of :data:`RULES`), or None."""
    pattern, limit, _ = RULES[kind]
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        return f"longer than {limit} characters"
    dots = kind == "key" and (value == "." or value.startswith(".."))  # hasChDirPrefix
    if dots or not pattern.fullmatch(value):
        return f"not a valid {kind}"
    return None


def check(value: str, kind: str, option: str) -> str:
    """``value`` when it is a valid ``kind``; else a :class:`UserError` naming ``option`` and the rule."""
    why = problem(value, kind)
    if why is not None:
        from migctl.inputs import printable

        raise UserError(f"{option} '{printable(value)}': {why} (valid: {RULES[kind][2]})")
    return value


def check_image(value: str, option: str = "--image") -> str:
    """A container image reference: not empty, no whitespace or control characters (the registry checks the
    rest of the grammar when the image is pulled)."""
    if not value or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        from migctl.inputs import printable

        raise UserError(f"{option} '{printable(value)}': not an image reference (valid: e.g. "
                        "registry.example.com/migctl:0.1, without spaces or control characters)")
    return value
