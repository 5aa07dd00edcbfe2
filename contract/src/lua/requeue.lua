-- Requeue of one worker's processing list.
-- KEYS: processing, queue, workers, attempts, givebacks. ARGV: worker, give back ("1" or "0").
-- The processing list has the newest id on the left; RPUSHing from newest to oldest leaves the
-- oldest at the right end, taken first. With give back, each id's delivery is uncounted: a
-- worker that exits gracefully did not fail on the ids it still holds (they waited for MySQL
-- or the search server, or the grace period ended). A worker that dies is requeued by its
-- supervisor without it, so a task that kills its worker still runs out of attempts.
-- A give-back is counted instead (HINCRBY givebacks), so a task that always outlasts the grace
-- period does not circulate forever: the next take dead-letters it past queue.maxGiveBacks.
-- The ack and dead-letter scripts HDEL that count, so the hash holds only ids in flight.
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for i = 1, #ids do
  redis.call('RPUSH', KEYS[2], ids[i])
  if ARGV[2] == '1' then
    if redis.call('HINCRBY', KEYS[4], ids[i], -1) <= 0 then
      redis.call('HDEL', KEYS[4], ids[i])
    end
    redis.call('HINCRBY', KEYS[5], ids[i], 1)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return #ids
