-- The dead-letter step shared by the dead-letter and retry scripts (prepended to each).
-- KEYS[1] processing, KEYS[3] stats, KEYS[4] attempts, KEYS[5] dead, KEYS[6] givebacks;
-- ARGV[1] id, ARGV[3..6] stage, reason, at, worker.
local function dead_letter()
  local attempts = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0') or 0
  local entry = cjson.encode({id = ARGV[1], stage = ARGV[3], reason = ARGV[4],
    attempts = attempts, at = ARGV[5], worker = ARGV[6]})
  redis.call('LPUSH', KEYS[5], entry)
  redis.call('HINCRBY', KEYS[3], 'dead', 1)
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[6], ARGV[1])
end
