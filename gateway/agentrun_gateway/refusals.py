"""A refused request, as the HTTP doors of the gateway (the runs API, and any door built on its templates,
callers and idempotency) raise it: the status, a machine-readable code, the field at fault and the fix."""

import dataclasses


@dataclasses.dataclass
class RefusalError(Exception):
    status: int
    code: str  # CamelCase, stable: what a program branches on
    message: str  # what is wrong, for a person
    fix: str = ""  # what to do about it
    field: str = ""  # the request field at fault, as a dotted path ("" for the request as a whole)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        if self.fix:
            error["fix"] = self.fix
        return {"error": error}
