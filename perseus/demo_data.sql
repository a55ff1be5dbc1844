-- Demo data for `perseus dev`: an admin, a few symbols per exchange. Idempotent like schema.sql.
INSERT INTO users (username, email, display_name, role)
VALUES ('admin', 'admin@perseus.local', 'Perseus Admin', 'admin')
ON CONFLICT (email) DO NOTHING;

INSERT INTO exchange_symbols (exchange_id, symbol, base_currency, quote_currency)
SELECT e.id, s.base || CASE WHEN e.name IN ('coinbase') THEN '-' ELSE '' END || s.quote, s.base, s.quote
FROM exchanges e
CROSS JOIN (VALUES ('BTC', 'USD'), ('ETH', 'USD'), ('SOL', 'USD'), ('XRP', 'USD'), ('DOGE', 'USD')) AS s(base, quote)
ON CONFLICT (exchange_id, symbol) DO NOTHING;
