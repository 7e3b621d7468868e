-- The seed design's credits, as the studio planned them: an account with
-- its available credits and one hold per request. reserve_credit is one
-- statement (decrement available and insert the hold, or nothing when the
-- account is short); confirm_credit charges a hold, refund_credit gives it
-- back. Nothing ties a hold to its BullMQ job: that is the design measured.

CREATE TABLE credit_accounts (
    user_id    uuid PRIMARY KEY,
    available  bigint NOT NULL CHECK (available >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_holds (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES credit_accounts,
    amount     bigint NOT NULL CHECK (amount > 0),
    state      text NOT NULL DEFAULT 'reserved' CHECK (state IN ('reserved', 'charged', 'refunded')),
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz
);
CREATE INDEX credit_holds_user_id ON credit_holds (user_id);

-- reserve_credit moves amount from the user's available credits into a new
-- hold and returns its id, or raises SQLSTATE SC402 when the account cannot
-- cover it.
CREATE FUNCTION reserve_credit(p_user uuid, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    hold bigint;
BEGIN
    WITH a AS (
        UPDATE credit_accounts
           SET available = available - p_amount, updated_at = now()
         WHERE user_id = p_user AND available >= p_amount
        RETURNING user_id
    )
    INSERT INTO credit_holds (user_id, amount)
    SELECT user_id, p_amount FROM a
    RETURNING id INTO hold;
    IF hold IS NULL THEN
        RAISE EXCEPTION 'not enough credits for %', p_amount USING ERRCODE = 'SC402';
    END IF;
    RETURN hold;
END;
$$;

-- confirm_credit charges a reserved hold (the credits already left
-- available at reserve); false when the hold was not reserved any more.
CREATE FUNCTION confirm_credit(p_hold bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH h AS (
        UPDATE credit_holds SET state = 'charged', settled_at = now()
         WHERE id = p_hold AND state = 'reserved'
        RETURNING id
    )
    SELECT count(*) = 1 FROM h;
$$;

-- refund_credit returns a reserved hold's credits to the account; false
-- when the hold was not reserved any more.
CREATE FUNCTION refund_credit(p_hold bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH h AS (
        UPDATE credit_holds SET state = 'refunded', settled_at = now()
         WHERE id = p_hold AND state = 'reserved'
        RETURNING user_id, amount
    ), a AS (
        UPDATE credit_accounts c
           SET available = c.available + h.amount, updated_at = now()
          FROM h
         WHERE c.user_id = h.user_id
        RETURNING c.user_id
    )
    SELECT count(*) = 1 FROM a;
$$;
