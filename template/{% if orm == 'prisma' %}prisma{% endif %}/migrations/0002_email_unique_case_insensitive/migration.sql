-- Emails are unique case-insensitively. An expression index, which schema.prisma cannot
-- express: it lives in this migration only (see the comment on User.email).
CREATE UNIQUE INDEX "uq_users_email_lower" ON "users"(lower("email"));
