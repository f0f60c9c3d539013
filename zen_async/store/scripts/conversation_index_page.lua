-- conversation_index_page: the next entries of the thread index, newest update first, after a
-- (score, member) position; keyset pagination, stable while other threads are updated.
--
-- KEYS[1]  the thread index: a sorted set of thread ids scored by last update (ms)
-- ARGV[1]  score of the last entry already seen, "" to start from the newest
-- ARGV[2]  member of the last entry already seen ("" with ARGV[1] = "")
-- ARGV[3]  how many entries to return at most
--
-- Returns {member, score, member, score, ...}. In this order entries of one score come by
-- member, descending; an entry follows (s, m) when its score is below s, or equal with a
-- member below m.
-- idempotent: true
local function bytes_below(a, b)
  -- Lua's "<" on strings follows the server's collation locale; the index orders bytes.
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local count = tonumber(ARGV[3])
if ARGV[1] == "" then
  return redis.call("ZRANGE", KEYS[1], "+inf", "-inf", "BYSCORE", "REV", "LIMIT", 0, count,
    "WITHSCORES")
end
local out = {}
-- Same-millisecond ties: few, so they are read whole and filtered here.
local ties = redis.call("ZRANGE", KEYS[1], ARGV[1], ARGV[1], "BYSCORE", "REV")
for _, member in ipairs(ties) do
  if #out >= 2 * count then
    return out
  end
  if bytes_below(member, ARGV[2]) then
    out[#out + 1] = member
    out[#out + 1] = ARGV[1]
  end
end
local rest = redis.call("ZRANGE", KEYS[1], "(" .. ARGV[1], "-inf", "BYSCORE", "REV", "LIMIT", 0,
  count - #out / 2, "WITHSCORES")
for _, item in ipairs(rest) do
  out[#out + 1] = item
end
return out
