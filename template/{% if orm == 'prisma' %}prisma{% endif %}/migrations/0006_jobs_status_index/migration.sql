-- CreateIndex
CREATE INDEX "ix_jobs_status" ON "jobs"("status");
