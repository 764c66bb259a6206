"""The ops of protocol v1 and v1.1 and their fields: the one definition (docs/PROTOCOL.md is their
prose).  Sans-IO, no handlers here: the core (imsrv.core.app) maps each op to its handler.

A schema is ``{field name: (check, required)}``: ``check`` is one of the field rules of
:mod:`imsrv.protocol.fields` (it returns the clean value or raises BadRequest naming the
field), ``required`` is :data:`REQUIRED` or :data:`OPTIONAL`.  Fields a schema does not name
are ignored, as the contract says.  ``imsrv call --help`` lists the API ops from here.
"""
from .fields import (admin_key, any_json, boolean, cmid, device, display_name, emoji, given_password, group_id,
                     group_name, http_url, limit_up_to, mentions, mid, mute_until, non_negative_int, notice,
                     password, positive_int, query, remark, role, status, text, timestamp, token, user_list,
                     user_name, user_or_list)

#: the version ``login`` replies with
PROTOCOL_VERSION = "1.1"

#: admin_users' largest ``limit`` (its default is 50)
ADMIN_USERS_MAX = 1000

REQUIRED = True    # the request is a bad_request without this field
OPTIONAL = False   # may be left out (or null)

#: v1.1's conversation ops: API ops (with a token) and gateway ops (without).
CONVERSATION_SCHEMAS = {
    "conversations": {"limit": (limit_up_to(200), OPTIONAL), "before": (timestamp, OPTIONAL)},
    "mark_read": {"with": (user_name, OPTIONAL), "group": (group_id, OPTIONAL), "seq": (positive_int, REQUIRED)},
    "mute": {"with": (user_name, OPTIONAL), "group": (group_id, OPTIONAL), "until": (mute_until, REQUIRED)},
}

#: The API service's ops (short connections).
API_SCHEMAS = {
    "register": {"user": (user_name, REQUIRED), "password": (password, REQUIRED),
                 "name": (display_name, OPTIONAL)},
    "login": {"user": (user_name, REQUIRED), "password": (given_password, REQUIRED), "device": (device, OPTIONAL)},
    "logout": {},
    "change_password": {"password": (given_password, REQUIRED), "new_password": (password, REQUIRED)},
    "delete_account": {"password": (given_password, REQUIRED)},
    "profile": {"user": (user_name, OPTIONAL)},
    "set_profile": {"name": (display_name, OPTIONAL), "text": (text, OPTIONAL), "avatar": (http_url, OPTIONAL)},
    "set_remark": {"user": (user_name, REQUIRED), "remark": (remark, REQUIRED)},
    "friend_request": {"to": (user_name, REQUIRED), "message": (text, OPTIONAL)},
    "friend_requests": {},
    "friend_accept": {"user": (user_name, REQUIRED)},
    "friend_reject": {"user": (user_name, REQUIRED)},
    "friend_remove": {"user": (user_name, REQUIRED)},
    "friends": {},
    "block": {"user": (user_name, REQUIRED)},
    "unblock": {"user": (user_name, REQUIRED)},
    "group_create": {"name": (group_name, REQUIRED), "members": (user_list, OPTIONAL)},
    "group_invite": {"group": (group_id, REQUIRED), "users": (user_list, REQUIRED)},
    "group_leave": {"group": (group_id, REQUIRED)},
    "group_members": {"group": (group_id, REQUIRED)},
    "groups": {},
    "group_info": {"group": (group_id, REQUIRED)},
    "group_update": {"group": (group_id, REQUIRED), "name": (group_name, OPTIONAL), "notice": (notice, OPTIONAL)},
    "group_set_role": {"group": (group_id, REQUIRED), "user": (user_name, REQUIRED), "role": (role, REQUIRED)},
    "group_kick": {"group": (group_id, REQUIRED), "user": (user_name, REQUIRED)},
    "group_mute": {"group": (group_id, REQUIRED), "user": (user_name, OPTIONAL), "until": (mute_until, REQUIRED)},
    "group_transfer": {"group": (group_id, REQUIRED), "user": (user_name, REQUIRED)},
    "group_dissolve": {"group": (group_id, REQUIRED)},
    "history": {"with": (user_name, OPTIONAL), "group": (group_id, OPTIONAL),
                "before": (positive_int, OPTIONAL), "limit": (limit_up_to(200), OPTIONAL)},
    "search": {"q": (query, REQUIRED), "with": (user_name, OPTIONAL), "group": (group_id, OPTIONAL),
               "before": (mid, OPTIONAL), "limit": (limit_up_to(100), OPTIONAL)},
    **CONVERSATION_SCHEMAS,
    "notify": {"admin_key": (admin_key, REQUIRED), "to": (user_or_list, REQUIRED), "body": (any_json, REQUIRED)},
    # v1.1 "Operations": the admin ops (imsrv/core/admin.py checks what a type cannot: q a
    # name prefix, until not past, reason 1..256 characters); after: a page's last user
    "admin_users": {"admin_key": (admin_key, REQUIRED), "q": (query, OPTIONAL),
                    "limit": (limit_up_to(ADMIN_USERS_MAX), OPTIONAL), "after": (user_name, OPTIONAL)},
    "admin_ban": {"admin_key": (admin_key, REQUIRED), "user": (user_name, REQUIRED),
                  "until": (mute_until, REQUIRED), "reason": (text, REQUIRED)},
    "admin_unban": {"admin_key": (admin_key, REQUIRED), "user": (user_name, REQUIRED)},
    "admin_kick": {"admin_key": (admin_key, REQUIRED), "user": (user_name, REQUIRED), "device": (device, OPTIONAL)},
    "admin_stats": {"admin_key": (admin_key, REQUIRED)},
}

#: API ops that take no token (every other one needs a valid ``token`` field).
NO_TOKEN = frozenset(("register", "login", "notify",
                      "admin_users", "admin_ban", "admin_unban", "admin_kick", "admin_stats"))

#: The token field of the API ops that need one (checked before the op's own fields).
TOKEN_SCHEMA = {"token": (token, REQUIRED)}

#: The gateway's ops (long connections); ``auth`` must be the first frame of a connection.
GATEWAY_SCHEMAS = {
    "auth": {"token": (token, REQUIRED), "device": (device, OPTIONAL)},
    "ping": {},
    "send": {"to": (user_name, OPTIONAL), "group": (group_id, OPTIONAL), "body": (any_json, REQUIRED),
             "cmid": (cmid, OPTIONAL), "reply_to": (mid, OPTIONAL), "mentions": (mentions, OPTIONAL)},
    "recall": {"mid": (mid, REQUIRED), "cmid": (cmid, OPTIONAL)},
    "edit": {"mid": (mid, REQUIRED), "body": (any_json, REQUIRED), "cmid": (cmid, OPTIONAL)},
    "react": {"mid": (mid, REQUIRED), "emoji": (emoji, REQUIRED), "on": (boolean, OPTIONAL),
              "cmid": (cmid, OPTIONAL)},
    "sync": {"since": (non_negative_int, REQUIRED), "limit": (limit_up_to(1000), OPTIONAL)},
    "presence": {"users": (user_list, REQUIRED)},
    "status": {"status": (status, REQUIRED), "text": (text, OPTIONAL)},
    "typing": {"to": (user_name, REQUIRED)},
    "read": {"with": (user_name, OPTIONAL), "group": (group_id, OPTIONAL), "seq": (positive_int, REQUIRED)},
    **CONVERSATION_SCHEMAS,
}

#: Gateway ops that go through the send path like ``send`` (stored, acked, idempotent by cmid).
SEND_OPS = frozenset(("send", "recall", "edit", "react"))
