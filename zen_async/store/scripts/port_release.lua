-- port_release: end one lease and return its port to the free intervals.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  holder: "<tenant>/<agent>"
-- ARGV[2]  port
-- ARGV[3]  fencing token of the lease, or "" to release whatever lease the holder has on
--          the port (the seed's unfenced release_port)
-- ARGV[4]  host name (for messages)
--
-- Returns the token of the lease released, or 0 when the port was not leased (with "" as
-- token: not leased to this holder).
-- Errors: "CONFLICT ..." naming the port when it was reissued under another token or is
-- held by another holder (of another tenant: without its agent id or token).
-- Not idempotent: a resend after a lost reply would report 0 or a conflict.
local free, used, exp, owner, byagent, quar, resv =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

--@include port_intervals

local holder, port, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rec = redis.call("HGET", owner, port)
if not rec then return 0 end
local held, now_holder = string.match(rec, "^(%d+):(.*)$")
if token == "" then
  if now_holder ~= holder then return 0 end
elseif held ~= token or now_holder ~= holder then
  local _, agent = split_holder(holder)
  return redis.error_reply("CONFLICT port " .. port .. " on host " .. ARGV[4] ..
    " was reissued: the lease of agent " .. agent .. " (token " .. token ..
    ") expired or was released, and the port is now " .. held_by(now_holder, held, holder))
end
ensure_free()
drop(port)
return tonumber(held)
