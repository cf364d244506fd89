-- A new API key is announced like a revoked one: an api replica that remembers a key
-- as unknown (a client tried it before it existed) forgets that at once, so a key
-- works the moment it is created, on every replica.
DROP TRIGGER api_key_notify ON api_key;
CREATE TRIGGER api_key_notify AFTER INSERT OR UPDATE OR DELETE ON api_key
    FOR EACH STATEMENT EXECUTE FUNCTION notify_api_keys();
