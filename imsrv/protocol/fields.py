"""Field validation for protocol v1 and v1.1 requests (sans-IO).

Each op has a schema: field name -> (check, required).  ``validate(op_schema, frame)``
returns a dict of clean values or raises BadRequest naming the field.  Unknown fields
are ignored, as the contract says.
"""
import re

from .errors import BadRequest

NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{2,31}$")
STATUSES = ("online", "away", "busy")
MAX_ID_CHARS = 64
MAX_DISPLAY_NAME = 64
MAX_TEXT = 4096
MAX_BODY_BYTES = 16 * 1024
MAX_LIST = 500
MAX_NOTICE = 1024                     # group_update's notice
MAX_REMARK = 64                       # set_remark
MAX_AVATAR = 512                      # set_profile's avatar URL
MAX_EMOJI = 16                        # react
MAX_QUERY = 100                       # search's q
ROLES = ("admin", "member")           # what group_set_role may give (owner: group_transfer)
ALL = "all"                           # mentions: ["all"]
MIN_PASSWORD, MAX_PASSWORD = 8, 128   # the rule a NEW password must follow
MAX_GIVEN_PASSWORD = 1024             # bound on a password that is only verified


def _is_int(v):
    return type(v) is int  # bool is not an int here


def req_id(frame):
    """The request's id if it is a valid one, else raise BadRequest (id echoed when usable)."""
    rid = frame.get("id")
    if rid is None:
        return None
    if _is_int(rid):
        return rid
    if isinstance(rid, str):
        if len(rid) > MAX_ID_CHARS:
            raise BadRequest(f"field 'id': string longer than {MAX_ID_CHARS} characters")
        return rid
    raise BadRequest("field 'id': must be an integer or a string")


def echo_id(frame):
    """The id to echo in an error reply even when it is invalid (so the client can match)."""
    rid = frame.get("id") if isinstance(frame, dict) else None
    if _is_int(rid) or isinstance(rid, str):
        return rid
    return None


# ---------------------------------------------------------------- checks
# Each check takes (field, value) and returns the clean value or raises BadRequest.

def user_name(field, v):
    if not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be a user name (string)")
    name = v.lower()
    if not NAME_RE.fullmatch(name):
        raise BadRequest(
            f"field '{field}': {v!r} is not a valid user name "
            "(3-32 of a-z 0-9 _ . -, not starting with . or -)"
        )
    return name


def user_list(field, v):
    if not isinstance(v, list):
        raise BadRequest(f"field '{field}': must be a list of user names")
    if len(v) > MAX_LIST:
        raise BadRequest(f"field '{field}': more than {MAX_LIST} users")
    out = []
    for i, item in enumerate(v):
        name = user_name(f"{field}[{i}]", item)
        if name not in out:
            out.append(name)
    return out


def user_or_list(field, v):
    if isinstance(v, list):
        out = user_list(field, v)
        if not out:
            raise BadRequest(f"field '{field}': empty list")
        return out
    return [user_name(field, v)]


def password(field, v):
    """A new password (register, change_password's new_password): 8 to 128 characters."""
    if not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be a string")
    if not MIN_PASSWORD <= len(v) <= MAX_PASSWORD:
        raise BadRequest(f"field '{field}': must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return v


def given_password(field, v):
    """A password that is only verified (login, the current password of change_password and
    delete_account): any string of 1 to 1024 characters.  The 8..128 rule is for choosing a
    password; a shorter or longer guess is just wrong (`unauthorized`), it must not answer
    with the registration rule (which would also tell which guesses need no hashing)."""
    if not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be a string")
    if not 1 <= len(v) <= MAX_GIVEN_PASSWORD:
        raise BadRequest(f"field '{field}': must be 1 to {MAX_GIVEN_PASSWORD} characters")
    return v


def _bounded_str(lo, hi, what="string"):
    def check(field, v):
        if not isinstance(v, str):
            raise BadRequest(f"field '{field}': must be a {what}")
        if not lo <= len(v) <= hi:
            raise BadRequest(f"field '{field}': must be {lo} to {hi} characters")
        return v
    return check


def credential(field, v):
    """A token or an admin_key: only its type is a request rule (`bad_request`).  The contract
    gives no length for either, so any string is one the server may or may not accept: an
    empty, over-long, unknown or wrong one is "no valid token" / "wrong credentials"
    (`unauthorized`), decided where it is checked (Accounts.resolve, App.api_notify)."""
    if not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be a string")
    return v


token = credential
admin_key = credential
device = _bounded_str(1, 64)
display_name = _bounded_str(0, MAX_DISPLAY_NAME)
text = _bounded_str(0, MAX_TEXT)
group_id = _bounded_str(1, 64)
group_name = _bounded_str(1, MAX_DISPLAY_NAME)


def cmid(field, v):
    if isinstance(v, str):
        if not 1 <= len(v) <= MAX_ID_CHARS:
            raise BadRequest(f"field '{field}': must be 1 to {MAX_ID_CHARS} characters")
        return v
    if _is_int(v):
        return v
    raise BadRequest(f"field '{field}': must be a string or an integer")


def status(field, v):
    if v not in STATUSES or not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be one of {', '.join(STATUSES)}")
    return v


def non_negative_int(field, v):
    if not _is_int(v) or v < 0:
        raise BadRequest(f"field '{field}': must be a non-negative integer")
    return v


def positive_int(field, v):
    if not _is_int(v) or v < 1:
        raise BadRequest(f"field '{field}': must be a positive integer")
    return v


def limit_up_to(maximum):
    def check(field, v):
        if not _is_int(v) or not 1 <= v <= maximum:
            raise BadRequest(f"field '{field}': must be an integer from 1 to {maximum}")
        return v
    return check


def boolean(field, v):
    if type(v) is not bool:
        raise BadRequest(f"field '{field}': must be true or false")
    return v


def mid(field, v):
    """A message id (a positive integer)."""
    return positive_int(field, v)


def timestamp(field, v):
    """Milliseconds since the epoch (a non-negative integer)."""
    return non_negative_int(field, v)


def mute_until(field, v):
    """``mute``'s until: ms since the epoch, 0 unmutes, -1 forever."""
    if not _is_int(v) or v < -1:
        raise BadRequest(f"field '{field}': must be ms since the epoch, 0 (unmute) or -1 (forever)")
    return v


def role(field, v):
    if not isinstance(v, str) or v not in ROLES:
        raise BadRequest(f"field '{field}': must be one of {', '.join(ROLES)}, not {v!r}")
    return v


def mentions(field, v):
    """``send``'s mentions: member user names, or ["all"]."""
    if v == [ALL]:
        return [ALL]
    if isinstance(v, list) and ALL in v:
        raise BadRequest(f"field '{field}': \"{ALL}\" must be the only item (mentions everyone)")
    out = user_list(field, v)
    if not out:
        raise BadRequest(f"field '{field}': empty list")
    return out


def http_url(field, v):
    """An avatar: an http or https URL of at most 512 characters ("" clears it)."""
    if not isinstance(v, str):
        raise BadRequest(f"field '{field}': must be a string")
    if len(v) > MAX_AVATAR:
        raise BadRequest(f"field '{field}': longer than {MAX_AVATAR} characters")
    if v and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", v, re.IGNORECASE):
        raise BadRequest(f"field '{field}': {v[:40]!r} is not an http or https URL")
    return v


emoji = _bounded_str(1, MAX_EMOJI)
notice = _bounded_str(0, MAX_NOTICE)
remark = _bounded_str(0, MAX_REMARK)
query = _bounded_str(1, MAX_QUERY)


def any_json(field, v):
    return v


def validate(schema, frame):
    """Check ``frame`` against ``schema`` ({field: (check, required)}); -> clean dict."""
    out = {}
    for field, (check, required) in schema.items():
        v = frame.get(field)
        if v is None and not (check is any_json and field in frame):  # a null body is a body
            if required:
                raise BadRequest(f"field '{field}' is missing")
            continue
        out[field] = check(field, v)
    return out


def one_of(clean, a, b):
    """Exactly one of the two fields must be present."""
    if (a in clean) == (b in clean):
        raise BadRequest(f"exactly one of the fields '{a}' and '{b}' is required")
