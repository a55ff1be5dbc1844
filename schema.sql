-- Perseus / Livermore catalog. This file is the only DDL: `perseus db init` applies it, and applying
-- it again changes nothing (every statement is IF NOT EXISTS or ON CONFLICT DO NOTHING).

CREATE TABLE IF NOT EXISTS users (
    id              SERIAL PRIMARY KEY,
    username        VARCHAR(100) NOT NULL UNIQUE,
    email           VARCHAR(255) NOT NULL UNIQUE,
    display_name    VARCHAR(255),
    role            VARCHAR(20)  NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user', 'viewer')),
    is_active       BOOLEAN      NOT NULL DEFAULT TRUE,
    clerk_id        VARCHAR(255) UNIQUE,
    last_login_at   TIMESTAMPTZ,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS exchanges (
    id                    SERIAL PRIMARY KEY,
    name                  VARCHAR(50)  NOT NULL UNIQUE,
    display_name          VARCHAR(100) NOT NULL,
    ws_url                VARCHAR(255),
    rest_url              VARCHAR(255),
    supported_timeframes  JSONB        NOT NULL DEFAULT '[]'::jsonb,
    api_limits            JSONB        NOT NULL DEFAULT '{}'::jsonb,
    fee_schedule          JSONB        NOT NULL DEFAULT '{}'::jsonb,
    geo_restrictions      JSONB        NOT NULL DEFAULT '{}'::jsonb,
    is_active             BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at            TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS exchange_symbols (
    id              SERIAL PRIMARY KEY,
    exchange_id     INTEGER      NOT NULL REFERENCES exchanges(id) ON DELETE CASCADE,
    symbol          VARCHAR(50)  NOT NULL,
    base_currency   VARCHAR(20)  NOT NULL,
    quote_currency  VARCHAR(20)  NOT NULL,
    is_active       BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    UNIQUE (exchange_id, symbol)
);
CREATE INDEX IF NOT EXISTS exchange_symbols_active_idx ON exchange_symbols (exchange_id) WHERE is_active;

CREATE TABLE IF NOT EXISTS user_exchanges (
    id              SERIAL PRIMARY KEY,
    user_id         INTEGER      NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    exchange_id     INTEGER      NOT NULL REFERENCES exchanges(id) ON DELETE CASCADE,
    is_default      BOOLEAN      NOT NULL DEFAULT FALSE,
    is_active       BOOLEAN      NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    UNIQUE (user_id, exchange_id)
);

CREATE TABLE IF NOT EXISTS api_keys (
    id              SERIAL PRIMARY KEY,
    name            VARCHAR(100) NOT NULL,
    key             UUID         NOT NULL UNIQUE,
    is_active       BOOLEAN      NOT NULL DEFAULT TRUE,
    created_by      INTEGER      REFERENCES users(id) ON DELETE SET NULL,
    last_used_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- Perseus: keys are kept as an HMAC-SHA-256 of the key (hex) under the server secret below, never
-- in clear. `key` stays for Livermore's readers and is NULL on every row once `perseus db init`
-- has migrated the clear keys an older version wrote (Python computes the HMAC, so the migration
-- runs right after this file). A random 122-bit-plus token needs no slow hash: the keyed hash
-- only has to make a leaked table useless without the secret.
ALTER TABLE api_keys ALTER COLUMN key DROP NOT NULL;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS key_hash   TEXT UNIQUE;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS scope      TEXT NOT NULL DEFAULT 'read'
    CHECK (scope IN ('read', 'operate', 'admin'));
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS exchanges  TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;

-- The server secret of the keyed hash: made once, from PostgreSQL's strong random source
-- (gen_random_uuid), in a table of its own so that grants can keep it from readers of api_keys.
CREATE TABLE IF NOT EXISTS api_key_secret (
    one             BOOLEAN      PRIMARY KEY DEFAULT TRUE CHECK (one),
    secret          TEXT         NOT NULL
);
INSERT INTO api_key_secret (one, secret)
VALUES (TRUE, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
ON CONFLICT DO NOTHING;

-- Perseus: a counter that every change to the exchange catalog bumps, in the same transaction (a
-- statement trigger). The API reads it with each API-key check and keeps its list of active
-- exchanges while the counter stands still: one query fewer per request, never an older list.
CREATE TABLE IF NOT EXISTS catalog_version (
    one             BOOLEAN      PRIMARY KEY DEFAULT TRUE CHECK (one),
    version         BIGINT       NOT NULL DEFAULT 0
);
INSERT INTO catalog_version (one, version) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION perseus_bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_version SET version = version + 1;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER exchanges_catalog_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON exchanges
    FOR EACH STATEMENT EXECUTE FUNCTION perseus_bump_catalog_version();

-- The exchange catalog. Seeded by name: re-applying never duplicates or overwrites an operator's edits.
INSERT INTO exchanges (name, display_name, ws_url, rest_url, supported_timeframes, api_limits, fee_schedule, geo_restrictions)
VALUES
    ('coinbase', 'Coinbase', 'wss://advanced-trade-ws.coinbase.com', 'https://api.coinbase.com',
     '["1m","5m","15m","1h","6h","1d"]', '{"restPerSecond": 10, "wsSubscriptionsPerConnection": 100}',
     '{"maker": 0.004, "taker": 0.006}', '{"blocked": []}'),
    ('binance', 'Binance', 'wss://stream.binance.com:9443/ws', 'https://api.binance.com',
     '["1m","3m","5m","15m","30m","1h","2h","4h","6h","8h","12h","1d","3d","1w","1M"]',
     '{"requestWeightPerMinute": 6000, "wsStreamsPerConnection": 1024}',
     '{"maker": 0.001, "taker": 0.001}', '{"blocked": ["US"]}'),
    ('binance_us', 'Binance.US', 'wss://stream.binance.us:9443/ws', 'https://api.binance.us',
     '["1m","3m","5m","15m","30m","1h","2h","4h","6h","8h","12h","1d","3d","1w","1M"]',
     '{"requestWeightPerMinute": 1200}', '{"maker": 0.006, "taker": 0.006}', '{"allowed": ["US"]}'),
    ('kraken', 'Kraken', 'wss://ws.kraken.com/v2', 'https://api.kraken.com',
     '["1m","5m","15m","30m","1h","4h","1d","1w","15d"]', '{"restCounterMax": 20}',
     '{"maker": 0.0025, "taker": 0.004}', '{"blocked": []}'),
    ('kucoin', 'KuCoin', 'wss://ws-api-spot.kucoin.com', 'https://api.kucoin.com',
     '["1m","3m","5m","15m","30m","1h","2h","4h","6h","8h","12h","1d","1w"]', '{"restPerSecond": 30}',
     '{"maker": 0.001, "taker": 0.001}', '{"blocked": ["US"]}'),
    ('mexc', 'MEXC', 'wss://wbs.mexc.com/ws', 'https://api.mexc.com',
     '["1m","5m","15m","30m","60m","4h","1d","1W","1M"]', '{"restPerSecond": 20}',
     '{"maker": 0.0, "taker": 0.0005}', '{"blocked": ["US"]}')
ON CONFLICT (name) DO NOTHING;

-- Perseus: the highest fencing epoch ever handed out per exchange. Redis holds the live counter
-- (exchange:{id}:epoch); this durable high-water mark keeps epochs increasing even when Redis loses
-- its data and the instance that knew the last epoch is gone too.
CREATE TABLE IF NOT EXISTS exchange_epochs (
    exchange_id     INTEGER      PRIMARY KEY REFERENCES exchanges(id) ON DELETE CASCADE,
    epoch           BIGINT       NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- Perseus: the durable copy of the network log. Every event written to `logs:network:{name}` is also
-- appended here, exactly once by its eventId, with the stream ID it got; the read API falls back to
-- these rows when the stream lacks them (Redis lost its data). Append-only: rows are never updated,
-- only deleted once older than the stream's 90-day retention.
CREATE TABLE IF NOT EXISTS network_events (
    event_id        TEXT         PRIMARY KEY,
    exchange_id     INTEGER      NOT NULL,
    exchange_name   VARCHAR(50)  NOT NULL,
    event           VARCHAR(40)  NOT NULL,
    occurred_at     TIMESTAMPTZ  NOT NULL,
    stream_ms       BIGINT       NOT NULL,
    stream_seq      BIGINT       NOT NULL,
    fields          JSONB        NOT NULL,
    recorded_at     TIMESTAMPTZ  NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS network_events_stream_idx
    ON network_events (exchange_name, stream_ms DESC, stream_seq DESC);
CREATE INDEX IF NOT EXISTS network_events_age_idx ON network_events (occurred_at);

-- Perseus: the state ledger. One row per state an exchange entered (from its state_transition
-- events): the interval [started_at, ended_at), ended_at NULL for the current one. Uptime and the
-- timeline read these few rows through the index instead of scanning the stream.
CREATE TABLE IF NOT EXISTS exchange_state_intervals (
    id              BIGSERIAL    PRIMARY KEY,
    exchange_id     INTEGER      NOT NULL,
    state           VARCHAR(20)  NOT NULL,
    started_at      TIMESTAMPTZ  NOT NULL,
    ended_at        TIMESTAMPTZ,
    event_id        TEXT         NOT NULL UNIQUE,
    -- Seconds per state from the ledger's first interval to started_at (a running sum): the time
    -- per state between two instants is the difference of two rows, however many lie between.
    before_s        JSONB        NOT NULL DEFAULT '{}'::jsonb
);
ALTER TABLE exchange_state_intervals ADD COLUMN IF NOT EXISTS before_s JSONB NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX IF NOT EXISTS exchange_state_intervals_idx
    ON exchange_state_intervals (exchange_id, started_at DESC, id DESC);

-- Perseus: how far each exchange's stream has been folded into the ledger (perseus/ledger_fold.py).
-- Entries other writers put in the stream (Livermore v6 services) reach network_events and the
-- ledger only through the fold; it moves this mark in the same transaction, under the ledger's
-- per-exchange lock, so several API processes never fold an entry twice and a restart resumes here.
CREATE TABLE IF NOT EXISTS ledger_folds (
    exchange_id     INTEGER      PRIMARY KEY,
    stream_ms       BIGINT       NOT NULL,
    stream_seq      BIGINT       NOT NULL,
    folded_at       TIMESTAMPTZ  NOT NULL DEFAULT now()
);

-- Perseus: the declared fleet (`perseus fleet apply`). One row per exchange: its hosts in order of
-- preference and how its instances run, as a JSON placement (perseus/fleet.py `Placement`). Workers
-- read their host's rows when they start and enrol them, so placements survive every restart.
CREATE TABLE IF NOT EXISTS fleet_placements (
    exchange        VARCHAR(50)  PRIMARY KEY REFERENCES exchanges(name) ON DELETE CASCADE,
    placement       JSONB        NOT NULL,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now()
);
