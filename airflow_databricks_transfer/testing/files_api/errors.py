"""Errors the emulator raises internally, rendered as the Files API's JSON error bodies."""

from __future__ import annotations

import uuid
from typing import Any


class ApiError(Exception):
    """An error answer: status, ``error_code``, message and an optional ``ErrorInfo`` reason."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        details: list[dict[str, Any]] = []
        if self.reason:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "filesystem.databricks.com",
                    "metadata": self.metadata,
                }
            )
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RequestInfo",
                "request_id": str(uuid.uuid4()),
                "serving_data": "",
            }
        )
        return {"error_code": self.error_code, "message": self.message, "details": details}


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def bad_request(message: str, *, reason: str | None = None) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message, reason=reason)


def already_exists(path: str) -> ApiError:
    return ApiError(409, "ALREADY_EXISTS", f"The file being created already exists: {path}")


class PresignedError(Exception):
    """A cloud-storage style XML error on a presigned URL (S3, Azure or GCS flavour)."""

    def __init__(self, status: int, xml: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(xml)
        self.status = status
        self.xml = xml
        self.retry_after_s = retry_after_s


def expired_error(cloud: str) -> PresignedError:
    """The three bodies that databricks-sdk recognises as "URL expired" (files_api.md section 7.3)."""
    if cloud == "AZURE":
        xml = (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
            "<Message>Server failed to authenticate the request.</Message>"
            "<AuthenticationErrorDetail>Signature not valid in the specified time frame"
            "</AuthenticationErrorDetail></Error>"
        )
    elif cloud == "GCP":
        xml = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>ExpiredToken</Code>"
            "<Message>Invalid argument.</Message><Details>The provided token has expired.</Details></Error>"
        )
    else:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            "<Message>Request has expired</Message></Error>"
        )
    return PresignedError(403, xml)


def signature_error() -> PresignedError:
    return PresignedError(
        403,
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>'
        "<Message>The request signature we calculated does not match the signature you provided."
        "</Message></Error>",
    )


def presigned_xml(
    status: int, code: str, message: str, *, retry_after_s: float | None = None
) -> PresignedError:
    return PresignedError(
        status,
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>",
        retry_after_s=retry_after_s,
    )


def _azure_xml(code: str, message: str, detail: str | None = None) -> str:
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}\nRequestId:{uuid.uuid4()}</Message>{extra}</Error>"
    )


def missing_length_error(cloud: str) -> PresignedError:
    """A PUT to an object store with a chunked body or no Content-Length: every cloud refuses it (411)."""
    if cloud == "AZURE":
        return PresignedError(
            411, _azure_xml("MissingContentLengthHeader", "Content-Length HTTP header is missing.")
        )
    return presigned_xml(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")


def too_large_error(cloud: str, limit: int) -> PresignedError:
    """A part above the store's size limit: S3 and GCS say EntityTooLarge (400), Azure RequestBodyTooLarge."""
    if cloud == "AZURE":
        return PresignedError(
            413,
            _azure_xml(
                "RequestBodyTooLarge",
                f"The request body is too large and exceeds the maximum permissible limit of {limit} bytes.",
            ),
        )
    return presigned_xml(
        400, "EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size of {limit} bytes."
    )


def signature_mismatch(cloud: str) -> PresignedError:
    """What a store says when the signature does not cover this request (method, signed headers, query)."""
    if cloud == "AZURE":
        return PresignedError(
            403,
            _azure_xml(
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header "
                "is formed correctly including the signature.",
                "Signature did not match.",
            ),
        )
    if cloud == "GCP":
        return presigned_xml(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your Google secret key and signing method.",
        )
    return signature_error()


def permission_mismatch() -> PresignedError:
    """Azure: the SAS is valid but does not grant the permission this method needs (read, write, delete)."""
    return PresignedError(
        403,
        _azure_xml(
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        ),
    )


def method_not_allowed() -> PresignedError:
    """A method the store has no operation for on this URL (S3's wording; XML on every cloud)."""
    return presigned_xml(
        405, "MethodNotAllowed", "The specified method is not allowed against this resource."
    )
