-- Issue #15: epochs are consecutive and never empty, so closes that did not fit one settlement cannot make another
-- epoch ending at the same moment: they make the next epoch at the engine's next step. `more` records that such
-- closes wait, so the next step gathers them without waiting for the epoch interval.
ALTER TABLE keeper.epochs ADD COLUMN more BOOLEAN NOT NULL DEFAULT FALSE;
