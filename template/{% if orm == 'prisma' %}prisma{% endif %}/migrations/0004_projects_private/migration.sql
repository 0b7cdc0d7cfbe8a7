-- AlterTable
ALTER TABLE "projects" ADD COLUMN "private" BOOLEAN NOT NULL DEFAULT false;
