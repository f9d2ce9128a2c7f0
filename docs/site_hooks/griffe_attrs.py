"""griffe extension: give attrs classes the ``__init__`` attrs writes at run time.

griffe reads source statically, so an ``@frozen``/``@define`` class has no ``__init__``
and every ``:param:`` in its docstring looks unknown. This adds one with a parameter per
annotated field (in order, with its default), as attrs would; class variables and
private fields keep attrs' rules (``ClassVar`` skipped, a leading underscore dropped).
"""

from __future__ import annotations

from typing import Any

import griffe

_ATTRS_DECORATORS = {"frozen", "define", "mutable", "attrs.frozen", "attrs.define", "attr.s"}


class AttrsInit(griffe.Extension):
    def on_class_members(self, *, cls: griffe.Class, **_: Any) -> None:
        names = {str(d.value).split("(")[0] for d in cls.decorators}
        if not names & _ATTRS_DECORATORS or "__init__" in cls.members:
            return
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for member in cls.members.values():
            if not isinstance(member, griffe.Attribute) or member.annotation is None:
                continue
            if "ClassVar" in str(member.annotation) or "class-attribute" not in member.labels:
                continue
            name = member.name.lstrip("_")
            parameters.append(
                griffe.Parameter(
                    name,
                    annotation=member.annotation,
                    kind=griffe.ParameterKind.positional_or_keyword,
                    default=member.value,
                )
            )
        init = griffe.Function("__init__", parameters=griffe.Parameters(*parameters))
        init.parent = cls
        cls.set_member("__init__", init)
